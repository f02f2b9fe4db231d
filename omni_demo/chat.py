"""One browser tab's conversation with the non-streaming baseline: user input in, text and speech out.

Kept free of Gradio so tests can drive it directly; `omni_demo.ui` only moves values between the page and
here. This is the baseline the streaming engine replaces and is measured against.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from model import constants as C
from model.conversation import Audio, Conversation, Image, Part, Text, Video
from model.limits import UserInputError
from model.media import load_audio, load_image, load_video, media_kind
from model.prompt_text import check_user_text
from model.reference import ThinkerSampling, reference_generate

NOTHING_TO_ANSWER = "Say, type or upload something first."


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
    """Decode uploads into model parts, each by its content (not its name).

    Every check that can come before decoding does (model.limits: size, declared duration, header pixels);
    a MediaError names the file and says what is wrong with it in one sentence.
    """
    parts: list[Part] = []
    for path in paths:
        kind = media_kind(path)
        if kind == "audio":
            parts.append(Audio(load_audio(path)))
        elif kind == "image":
            parts.append(Image(load_image(path)))
        else:
            parts.append(Video(load_video(path)))
    return parts


def parts_from_message(text: str, paths: list[str]) -> list[Part]:
    """A user's message (typed text and uploaded files) as model parts: the files first, then the text, as
    the official examples order them. A UserInputError (MediaError for files) says why not."""
    text = check_user_text(text)
    parts = parts_from_files(paths)
    if text.strip():
        parts.append(Text(text))
    if not parts:
        raise UserInputError(NOTHING_TO_ANSWER)
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
            raise UserInputError(NOTHING_TO_ANSWER)
        for part in parts:
            if isinstance(part, Text):
                check_user_text(part.text)
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
