"""A conversation as the model sees it: a system prompt and turns made of text, audio, image and video parts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model import constants as C
from model.inputs.media import VideoClip
from model.inputs.prompt_text import neutralise_control_tokens


@dataclass
class Text:
    text: str


@dataclass
class Audio:
    samples: np.ndarray  # float32 mono at 16 kHz

    @property
    def seconds(self) -> float:
        return len(self.samples) / C.INPUT_SAMPLE_RATE


@dataclass
class Image:
    image: object  # PIL.Image.Image, RGB


@dataclass
class Video:
    clip: VideoClip  # frames sampled at 2 fps, with the audio track if it has one


Part = Text | Audio | Image | Video


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    parts: list[Part]


@dataclass
class Conversation:
    system_prompt: str = C.AUDIO_SYSTEM_PROMPT
    turns: list[Turn] = field(default_factory=list)

    def add_user(self, *parts: Part) -> None:
        self.turns.append(Turn("user", list(parts)))

    def add_assistant(self, text: str) -> None:
        self.turns.append(Turn("assistant", [Text(text)]))

    def videos(self) -> list[VideoClip]:
        return [p.clip for t in self.turns for p in t.parts if isinstance(p, Video)]

    def use_audio_in_video(self) -> bool:
        """Whether videos carry their own sound in the prompt layout.

        The flag must be the same for the processor, the rope ids and generation, for every video of the
        prompt; so it is on only when every video has a sound track. Otherwise the sound of a video that
        has one is given as a separate audio part right after it, and nothing the user sent is dropped.
        """
        videos = self.videos()
        return bool(videos) and all(v.audio is not None for v in videos)

    def model_inputs(self) -> tuple[list[dict], dict[str, list]]:
        """Chat-template messages and the media lists in prompt order (audio, images, videos).

        Every prompt goes through here, so this is where text becomes safe: control-token strings in the
        system prompt and in text parts are broken so they tokenize as plain text (model.inputs.prompt_text).
        """
        interleave = self.use_audio_in_video()
        media: dict[str, list] = {"audio": [], "images": [], "videos": []}
        system = neutralise_control_tokens(self.system_prompt)
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}]
        for turn in self.turns:
            content = []
            for part in turn.parts:
                if isinstance(part, Text):
                    if content and content[-1]["type"] == "text":
                        # The template writes adjacent texts back to back, so "<|im_" + "start|>" would
                        # become one token: join them first, then neutralise the whole.
                        content[-1]["text"] += part.text
                    else:
                        content.append({"type": "text", "text": part.text})
                elif isinstance(part, Audio):
                    content.append({"type": "audio"})
                    media["audio"].append(part.samples)
                elif isinstance(part, Image):
                    content.append({"type": "image"})
                    media["images"].append(part.image)
                elif isinstance(part, Video):
                    content.append({"type": "video"})
                    media["videos"].append(part.clip)
                    if part.clip.audio is not None:
                        if not interleave:
                            content.append({"type": "audio"})
                        media["audio"].append(part.clip.audio)
            for item in content:
                if item["type"] == "text":
                    item["text"] = neutralise_control_tokens(item["text"])
            messages.append({"role": turn.role, "content": content})
        return messages, media
