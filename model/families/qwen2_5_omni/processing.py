"""Qwen2.5-Omni's processor: the shared machinery (model/families/processing_parts.py) with Qwen2.5-Omni's
audio token count, its audio features and its layout of a video with its sound, as `Qwen2_5OmniProcessor`
makes them (the tests compare them with transformers' own processor).

One deliberate difference: transformers pads every audio's features to 300 s (30000 mel frames); we cut the
padding after the longest clip. Every valid frame keeps its value (the features are computed on the padded
signal first), and the model only reads frames under `feature_attention_mask`, so the model's inputs are the
same, at a fraction of the size. `trim_audio_padding=False` gives transformers' shapes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.families.processing_parts import POSITION_IDS_PER_SECOND, SECONDS_PER_CHUNK, OmniProcessorBase


def audio_token_count(mel_frames: int) -> int:
    """Thinker tokens for `mel_frames` frames of log-mel (100 per second): the encoder's stride-2 conv, then a
    stride-2 pooling, so one token per 40 ms."""
    after_conv = (mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def _chunk_lengths(positions: Sequence[float], tokens_per_chunk: int) -> list[int]:
    """Lengths of the runs that transformers' `get_chunked_index` cuts an increasing list of time positions into.

    A run ends before the first position that reaches the next boundary (tokens_per_chunk, 2x that, ...), and
    the boundary then moves on by one chunk only, even when a position jumps several chunks ahead; the thinker's
    rope ids chunk the same way, so the prompt must too.
    """
    lengths, start, boundary = [], 0, tokens_per_chunk
    for i, position in enumerate(positions):
        if position >= boundary:
            lengths.append(i - start)
            start, boundary = i, boundary + tokens_per_chunk
    lengths.append(len(positions) - start)
    return lengths


def video_audio_layout(
    grid_t: int,
    tokens_per_grid: int,
    seconds_per_grid: float,
    audio_tokens: int,
    position_ids_per_second: float = POSITION_IDS_PER_SECOND,
    seconds_per_chunk: float = SECONDS_PER_CHUNK,
) -> list[tuple[str, int]]:
    """The token layout of a video with its sound (use_audio_in_video): for each `seconds_per_chunk` window,
    first that window's video tokens, then its audio tokens, as [("video" | "audio", count), ...].

    `tokens_per_grid` is one frame pair's tokens (grid_h * grid_w / merge**2). In the prompt the layout sits
    between <|audio_bos|> and <|audio_eos|>, inside <|vision_bos|> ... <|vision_eos|>. Empty runs are left out.
    """
    tokens_per_chunk = int(position_ids_per_second * seconds_per_chunk)
    # The time position of each token, as transformers computes it: the frame pair's start in rope ids.
    video_positions = [
        t * seconds_per_grid * position_ids_per_second for t in range(grid_t) for _ in range(tokens_per_grid)
    ]
    video_runs = _chunk_lengths(video_positions, tokens_per_chunk)
    audio_runs = _chunk_lengths(range(audio_tokens), tokens_per_chunk)  # one position per 40 ms token
    layout = []
    for window in range(max(len(video_runs), len(audio_runs))):
        for modality, runs in (("video", video_runs), ("audio", audio_runs)):
            if window < len(runs) and runs[window]:
                layout.append((modality, runs[window]))
    return layout


class OmniProcessor(OmniProcessorBase):
    """Text, audio, images and video -> the thinker's inputs, as `Qwen2_5OmniProcessor` makes them."""

    def audio_tokens(self, mel_frames: int) -> int:
        """Thinker tokens for an audio of `mel_frames` log-mel frames."""
        return audio_token_count(mel_frames)

    def video_audio_layout(
        self, grid_t: int, tokens_per_grid: int, seconds_per_grid: float, audio_tokens: int
    ) -> list[tuple[str, int]]:
        """The runs of a video's tokens and its sound's, in prompt order (use_audio_in_video)."""
        return video_audio_layout(
            grid_t, tokens_per_grid, seconds_per_grid, audio_tokens, self.position_ids_per_second, self.seconds_per_chunk
        )

    def _audio_features(self, audio: list[np.ndarray]) -> tuple[dict, list[int]]:
        if self.trim_audio_padding:
            return self._trimmed_audio_features(audio)
        # As transformers' processor: all clips in one call, padded to 300 s ("max_length"). The log-mel's floor
        # (8 below the clip's maximum) and the last frames' windows see the padding, so the padded call is the
        # one that gives transformers' values.
        features = self.feature_extractor(
            audio,
            sampling_rate=self.feature_extractor.sampling_rate,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        input_features, mask = features["input_features"], features["attention_mask"]
        frames = mask.sum(-1)
        if self.trim_audio_padding:
            # The mask is a prefix of ones (right padding), so this keeps every valid frame of every clip.
            keep = int(frames.max())
            input_features, mask = input_features[..., :keep].contiguous(), mask[:, :keep].contiguous()
        tokens = [self.audio_tokens(int(n)) for n in frames]
        return {"input_features": input_features, "feature_attention_mask": mask}, tokens

    def _trimmed_audio_features(self, audio: list[np.ndarray]) -> tuple[dict, list[int]]:
        """The padded call's frames with sound, bit for bit, without computing 300 s of log-mel (0.15-0.2 s of
        CPU per call, paid again by every 2 s window of live input; this takes milliseconds). The frames that
        overlap a clip's end see zeros after it there: n_fft zeros appended here give them the same zeros. The
        floor is 8 below the clip's largest value, which comes from frames with sound either way (frames of
        pure padding sit at the log's minimum)."""
        extractor = self.feature_extractor
        hop = extractor.hop_length
        padded = [np.pad(np.asarray(clip), (0, extractor.n_fft)) for clip in audio]
        features = extractor(
            padded,
            sampling_rate=extractor.sampling_rate,
            return_attention_mask=True,
            padding="longest",
            return_tensors="pt",
        )
        # transformers' mask: one frame per hop-th sample of the clip, i.e. ceil(length / hop) frames.
        frames = torch.tensor([-(-len(clip) // hop) for clip in audio])
        keep = int(frames.max())
        dtype = features["attention_mask"].dtype
        mask = (torch.arange(keep)[None, :] < frames[:, None]).to(dtype)
        input_features = features["input_features"][..., :keep].contiguous()
        tokens = [self.audio_tokens(int(n)) for n in frames]
        return {"input_features": input_features, "feature_attention_mask": mask}, tokens
