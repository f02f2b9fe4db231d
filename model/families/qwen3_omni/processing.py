"""Qwen3-Omni's processor: the shared machinery (`OmniProcessorBase`) with Qwen3-Omni's audio token count, audio
features and video-with-sound layout.

Its audio features are padded as transformers' Qwen3-Omni processor pads them (to the longest clip).
Everything else (tokenizer, Whisper log-mel, the PIL image processor, the torch-only video frames, the chat
template) is the same machinery, read from the checkpoint's files: Qwen3-Omni's patch size (16) and token
names come from there. transformers' `Qwen3OmniMoeProcessor` cannot be built without torchvision either.
"""

from __future__ import annotations

import numpy as np

from model.families.processing_parts import OmniProcessorBase, _read_json

N_WINDOW = 50  # the audio encoder's conv chunk is 2 * n_window mel frames (1 s): 13 tokens each


def qwen3_audio_token_count(mel_frames: int, n_window: int = N_WINDOW) -> int:
    """Thinker tokens for `mel_frames` log-mel frames: 13 per whole 1 s chunk, the rest through the encoder's
    three stride-2 convolutions (transformers' `_get_feat_extract_output_lengths`)."""
    chunk = 2 * n_window
    rest = (mel_frames % chunk - 1) // 2 + 1
    return ((rest - 1) // 2 + 1 - 1) // 2 + 1 + (mel_frames // chunk) * 13


class Qwen3OmniProcessor(OmniProcessorBase):
    def __init__(self, *args, n_window: int = N_WINDOW, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_window = n_window

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, **hub_kwargs) -> Qwen3OmniProcessor:
        processor = super().from_pretrained(path_or_hub_id, **hub_kwargs)
        config = _read_json(str(path_or_hub_id), "config.json", required=False, **hub_kwargs) or {}
        processor.n_window = config.get("thinker_config", {}).get("audio_config", {}).get("n_window", N_WINDOW)
        return processor

    def audio_tokens(self, mel_frames: int) -> int:
        return qwen3_audio_token_count(mel_frames, self.n_window)

    def _audio_features(self, audio: list[np.ndarray]) -> tuple[dict, list[int]]:
        """As transformers' Qwen3-Omni processor: the clips padded to the longest (not to 300 s), so the longest
        clip's last frames see its own reflection, the others' see zeros."""
        extractor = self.feature_extractor
        features = extractor(
            [np.asarray(clip) for clip in audio],
            sampling_rate=extractor.sampling_rate,
            return_attention_mask=True,
            padding="longest",
            return_tensors="pt",
        )
        mask = features["attention_mask"]
        tokens = [self.audio_tokens(int(n)) for n in mask.sum(-1)]
        return {"input_features": features["input_features"], "feature_attention_mask": mask}, tokens

    def video_audio_layout(
        self, grid_t: int, tokens_per_grid: int, seconds_per_grid: float, audio_tokens: int
    ) -> list[tuple[str, int]]:
        """Each frame pair's tokens at its start time, then the audio tokens (one position each) before the next
        pair's: times in position ids (`position_ids_per_second` of them a second, 13 for Qwen3-Omni)."""
        layout: list[tuple[str, int]] = []

        def add(modality: str, count: int) -> None:
            if count:
                if layout and layout[-1][0] == modality:
                    layout[-1] = (modality, layout[-1][1] + count)
                else:
                    layout.append((modality, count))

        audio_done = 0
        for t in range(grid_t):
            start = t * seconds_per_grid * self.position_ids_per_second
            # Audio token j goes before this pair when j < start (a pair at time start goes before audio at start).
            before = min(audio_tokens, max(audio_done, int(-(-start // 1))))
            add("audio", before - audio_done)
            audio_done = before
            add("video", tokens_per_grid)
        add("audio", audio_tokens - audio_done)
        return layout
