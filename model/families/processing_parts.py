"""The processor machinery both families' processors build on, made of parts that load everywhere.

transformers' Qwen-Omni processors cannot be built without torchvision (their video processors import it).
`OmniProcessorBase` assembles the same pieces: the Qwen2 tokenizer, `WhisperFeatureExtractor` (audio),
`Qwen2VLImageProcessorPil` (images), our torch-only `VideoFrameProcessor` (video) and the checkpoint's chat
template, and expands the prompt's media placeholders as transformers does, so its output is the same
`BatchFeature` (same keys, values and dtypes; the tests compare them with transformers' own processors) and
goes straight into `model.generate(**inputs, use_audio_in_video=...)`. What differs between the families
(the audio token count, the audio features' padding, a video's layout with its sound) is each family's
processing.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from transformers import AutoTokenizer, BatchFeature, WhisperFeatureExtractor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)
from transformers.utils import cached_file

from model import constants as C
from model.inputs.video_frames import VideoFrameProcessor

# Timing of a video's interleaved audio (use_audio_in_video). transformers' processor fixes both; the thinker
# config carries the same values (`position_id_per_seconds`, `seconds_per_chunk`) for its rope ids, and
# from_pretrained reads them from there when the checkpoint has a config.json.
POSITION_IDS_PER_SECOND = 25
SECONDS_PER_CHUNK = 2.0


@dataclass
class MediaInputs:
    """A prompt's media as the model reads them (`media_inputs`), with each item's count of placeholder tokens."""

    data: dict = field(default_factory=dict)  # images' and videos' tensors and grids
    audio_data: dict = field(default_factory=dict)  # audio features and their mask
    image_tokens: list[int] = field(default_factory=list)
    video_tokens: list[int] = field(default_factory=list)
    audio_tokens: list[int] = field(default_factory=list)


def _read_json(path_or_hub_id: str, filename: str, required: bool = True, **hub_kwargs) -> dict | None:
    path = cached_file(path_or_hub_id, filename, _raise_exceptions_for_missing_entries=required, **hub_kwargs)
    if path is None:
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)


class OmniProcessorBase:
    """Text, audio, images and video -> the thinker's inputs, as transformers' processor makes them. A family's
    subclass gives its audio token count (`audio_tokens`), its audio features (`_audio_features`) and the
    layout of a video with its sound (`video_audio_layout`)."""

    def __init__(
        self,
        tokenizer,
        feature_extractor: WhisperFeatureExtractor,
        image_processor: Qwen2VLImageProcessorPil,
        video_processor: VideoFrameProcessor,
        chat_template: str,
        *,
        position_ids_per_second: float = POSITION_IDS_PER_SECOND,
        seconds_per_chunk: float = SECONDS_PER_CHUNK,
        trim_audio_padding: bool = True,
    ):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.image_processor = image_processor
        self.video_processor = video_processor
        self.chat_template = chat_template
        self.position_ids_per_second = position_ids_per_second
        self.seconds_per_chunk = seconds_per_chunk
        self.trim_audio_padding = trim_audio_padding
        # The placeholder strings are the checkpoint's (tokenizer_config.json names them).
        self.audio_token = tokenizer.audio_token
        self.image_token = tokenizer.image_token
        self.video_token = tokenizer.video_token
        self.audio_bos_token = tokenizer.audio_bos_token
        self.audio_eos_token = tokenizer.audio_eos_token
        self.vision_bos_token = tokenizer.vision_bos_token
        self.vision_eos_token = tokenizer.vision_eos_token
        placeholders = (self.audio_token, self.image_token, self.video_token)
        self._placeholders = re.compile("|".join(map(re.escape, placeholders)))

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, **hub_kwargs) -> OmniProcessorBase:
        """From a checkpoint directory or hub id; `hub_kwargs` (revision, cache_dir, token, local_files_only...)
        go to every file lookup."""
        path_or_hub_id = str(path_or_hub_id)
        preprocessor_config = _read_json(path_or_hub_id, "preprocessor_config.json", **hub_kwargs)
        chat_template = _read_json(path_or_hub_id, "chat_template.json", **hub_kwargs)["chat_template"]
        timing = {}
        config = _read_json(path_or_hub_id, "config.json", required=False, **hub_kwargs)
        thinker = (config or {}).get("thinker_config", {})
        if "position_id_per_seconds" in thinker:
            timing["position_ids_per_second"] = thinker["position_id_per_seconds"]
        if "seconds_per_chunk" in thinker:
            timing["seconds_per_chunk"] = float(thinker["seconds_per_chunk"])
        return cls(
            AutoTokenizer.from_pretrained(path_or_hub_id, **hub_kwargs),
            WhisperFeatureExtractor.from_pretrained(path_or_hub_id, **hub_kwargs),
            Qwen2VLImageProcessorPil.from_pretrained(path_or_hub_id, **hub_kwargs),
            VideoFrameProcessor.from_config(preprocessor_config),
            chat_template,
            **timing,
        )

    def audio_tokens(self, mel_frames: int) -> int:
        """Thinker tokens for an audio of `mel_frames` log-mel frames."""
        raise NotImplementedError

    def video_audio_layout(
        self, grid_t: int, tokens_per_grid: int, seconds_per_grid: float, audio_tokens: int
    ) -> list[tuple[str, int]]:
        """The runs of a video's tokens and its sound's, in prompt order (use_audio_in_video)."""
        raise NotImplementedError

    def _audio_features(self, audio: list[np.ndarray]) -> tuple[dict, list[int]]:
        """The clips' log-mel features and attention mask, and each clip's token count."""
        raise NotImplementedError

    # Token ids the engine and generation need by name.
    @property
    def audio_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.audio_token)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def video_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.video_token)

    @property
    def audio_bos_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.audio_bos_token)

    @property
    def audio_eos_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.audio_eos_token)

    @property
    def vision_bos_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.vision_bos_token)

    @property
    def vision_eos_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.vision_eos_token)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id  # <|im_end|>: the thinker's end of turn

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def apply_chat_template(
        self, conversation: list[dict], add_generation_prompt: bool = True, tokenize: bool = False, **template_kwargs
    ) -> str | list[int]:
        """Render messages ({"role", "content": str | [{"type": "text" | "audio" | "image" | "video", ...}]})
        with the checkpoint's template: each media part becomes its placeholder, expanded later by __call__."""
        prompt = self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **template_kwargs,
        )
        return self.tokenizer(prompt).input_ids if tokenize else prompt

    def media_inputs(
        self,
        audio: Sequence[np.ndarray] | None = None,
        images: Sequence | None = None,
        videos: Sequence[np.ndarray] | None = None,
        video_fps: float | Sequence[float] | None = None,
    ) -> MediaInputs:
        """The media half of `__call__` (its arguments as there): the costly part, which needs no prompt, so
        a caller may make it on another thread than the one that runs the model."""
        audio, images, videos = list(audio or []), list(images or []), list(videos or [])
        media = MediaInputs()
        if images:
            image_data = self.image_processor(images, return_tensors="pt")
            media.image_tokens = (image_data["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist()
            media.data.update(image_data)
        if videos:
            media.data.update(self.video_processor(videos))
            if video_fps is None or isinstance(video_fps, (int, float)):
                fps = [float(video_fps or C.VIDEO_FPS)] * len(videos)
            else:
                fps = [float(f) for f in video_fps]
            if len(fps) != len(videos):
                raise ValueError(f"{len(videos)} videos but {len(fps)} frame rates")
            # A list, as transformers gives it; BatchFeature turns it into a float32 tensor.
            media.data["video_second_per_grid"] = [self.video_processor.temporal_patch_size / f for f in fps]
            media.video_tokens = (media.data["video_grid_thw"].prod(-1) // self.video_processor.merge_size**2).tolist()
        if audio:
            media.audio_data, media.audio_tokens = self._audio_features(audio)
        return media

    def __call__(
        self,
        text: str | list[str],
        audio: Sequence[np.ndarray] | None = None,
        images: Sequence | None = None,
        videos: Sequence[np.ndarray] | None = None,
        use_audio_in_video: bool = False,
        video_fps: float | Sequence[float] | None = None,
        return_tensors: str | None = "pt",
        media: MediaInputs | None = None,
    ) -> BatchFeature:
        """Prompt(s) with placeholders plus media -> the model's inputs.

        audio: float32 mono 16 kHz arrays, one per <|AUDIO|> in prompt order; with `use_audio_in_video` each
        <|VIDEO|> also takes the next one, its sound track, so the list follows the prompt's order of
        <|AUDIO|> and <|VIDEO|> placeholders. images: PIL images, one per <|IMAGE|>. videos: (T, H, W, 3) uint8
        frames, one array per <|VIDEO|>, sampled at `video_fps` (default 2, as the model was trained).
        media: those already through `media_inputs`, instead of audio, images, videos and video_fps.
        """
        texts = [text] if isinstance(text, str) else list(text)
        if media is None:
            media = self.media_inputs(audio, images, videos, video_fps)
        expanded = self._expand_placeholders(
            texts, media.image_tokens, media.video_tokens, media.audio_tokens, media.data, use_audio_in_video
        )
        # Left padding, as transformers' processor asks of the tokenizer, so that batched prompts end together.
        text_data = self.tokenizer(expanded, padding=True, padding_side="left", return_tensors=return_tensors)
        # Key order as transformers': text, images, videos, audio.
        return BatchFeature({**text_data, **media.data, **media.audio_data}, tensor_type=return_tensors)

    def _expand_placeholders(
        self,
        texts: list[str],
        image_tokens: list[int],
        video_tokens: list[int],
        audio_tokens: list[int],
        data: dict,
        use_audio_in_video: bool,
    ) -> list[str]:
        """Replace each placeholder by as many tokens as its media item has, in prompt order across the batch."""
        images, videos, audios = iter(image_tokens), iter(range(len(video_tokens))), iter(audio_tokens)

        def take(items, what):
            item = next(items, None)
            if item is None:
                raise ValueError(f"not enough {what} for the prompt's placeholders")
            return item

        def replacement(match: re.Match) -> str:
            token = match.group()
            if token == self.image_token:
                return self.image_token * take(images, "images")
            if token == self.audio_token:
                return self.audio_token * take(audios, "audio clips")
            index = take(videos, "videos")
            if not use_audio_in_video:
                return self.video_token * video_tokens[index]
            grid_t, grid_h, grid_w = data["video_grid_thw"][index].tolist()
            layout = self.video_audio_layout(
                grid_t,
                grid_h * grid_w // self.video_processor.merge_size**2,
                data["video_second_per_grid"][index],
                take(audios, "audio clips (with use_audio_in_video each video takes the next one as its sound)"),
            )
            tokens = {"video": self.video_token, "audio": self.audio_token}
            body = "".join(tokens[modality] * count for modality, count in layout)
            return self.audio_bos_token + body + self.audio_eos_token

        expanded = [self._placeholders.sub(replacement, sample) for sample in texts]
        for leftover, what in ((images, "image"), (videos, "video"), (audios, "audio")):
            if next(leftover, None) is not None:
                raise ValueError(f"more {what} inputs were given than the prompt has {what} placeholders")
        return expanded

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)
