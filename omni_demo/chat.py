"""One browser tab's conversation with the non-streaming baseline: user input in, text and speech out.

Kept free of Gradio so tests can drive it directly; `omni_demo.ui` only moves values between the page and
here. This is the baseline the streaming engine replaces and is measured against.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model import constants as C
from model.conversation import Audio, Conversation, Image, Part, Text, Video
from model.media import MediaError, load_audio, load_image, load_video, media_kind
from model.reference import ThinkerSampling, reference_generate

MAX_UPLOAD_BYTES = 200 * 1024**2  # checked before decoding anything


@dataclass
class TurnSettings:
    voice: str = "Chelsie"
    text_only: bool = False
    system_prompt: str = C.AUDIO_SYSTEM_PROMPT
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, the checkpoint's default


@dataclass
class Reply:
    text: str
    waveform: np.ndarray | None  # float32 at 24 kHz, None for text-only answers
    seconds: float  # wall time of the model call
    conversation: Conversation  # the conversation with this turn and its answer added


def parts_from_files(paths: list[str]) -> list[Part]:
    """Decode uploads into model parts; a MediaError names the file and what is wrong with it."""
    parts: list[Part] = []
    for path in paths:
        name = Path(path).name
        size = Path(path).stat().st_size if Path(path).exists() else 0
        if size > MAX_UPLOAD_BYTES:
            raise MediaError(f"{name} is {size / 1024**2:.0f} MB; the limit is {MAX_UPLOAD_BYTES / 1024**2:.0f} MB.")
        kind = media_kind(path)  # MediaError messages already name the file
        if kind == "audio":
            parts.append(Audio(load_audio(path)))
        elif kind == "image":
            parts.append(Image(load_image(path)))
        else:
            parts.append(Video(load_video(path)))
    return parts


class Responder:
    """Runs turns on the one loaded model, one at a time (the model and its device are shared)."""

    def __init__(self, loaded):
        self.loaded = loaded
        self._lock = threading.Lock()

    def answer(self, conversation: Conversation, parts: list[Part], settings: TurnSettings) -> Reply:
        """The reply to `parts` after `conversation`. Pure: the caller commits `Reply.conversation`, so
        that this also works in a forked ZeroGPU worker, whose changes to its arguments are not seen."""
        if not parts or all(isinstance(p, Text) and not p.text.strip() for p in parts):
            raise ValueError("Say, type or upload something first.")
        if settings.voice not in self.loaded.voices:
            raise ValueError(f"Unknown voice {settings.voice!r}; choose one of {', '.join(self.loaded.voice_names)}.")
        after = Conversation(settings.system_prompt, [*conversation.turns])
        after.add_user(*parts)
        with self._lock:
            result = reference_generate(
                self.loaded,
                after,
                voice=settings.voice,
                text_only=settings.text_only,
                max_new_tokens=settings.max_new_tokens,
                thinker=ThinkerSampling(temperature=settings.temperature),
                seed=None,
            )
        after.add_assistant(result.text)
        return Reply(result.text, result.waveform, result.seconds, after)
