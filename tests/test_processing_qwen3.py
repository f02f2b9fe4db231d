"""Qwen3-Omni's processor (model/families/qwen3_omni/processing.py) against transformers' `Qwen3OmniMoeProcessor`, built over
the same tokenizer, feature extractor and image processor (its video processor needs torchvision: the
stand-in of test_processing takes its place; only its class check refuses it)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_processing import image, speech_like, transformers_processor
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
    Qwen3OmniMoeProcessor,
    _get_feat_extract_output_lengths,
)

from model.families.qwen3_omni.processing import Qwen3OmniProcessor, qwen3_audio_token_count


@pytest.fixture(scope="module")
def ours(qwen3_dir) -> Qwen3OmniProcessor:
    return Qwen3OmniProcessor.from_pretrained(qwen3_dir)


@pytest.fixture(scope="module")
def reference(ours):
    return transformers_processor(Qwen3OmniMoeProcessor, ours)


@given(st.integers(1, 40_000))
def test_audio_token_count_is_transformers(mel_frames):
    assert qwen3_audio_token_count(mel_frames) == int(_get_feat_extract_output_lengths(torch.tensor(mel_frames)))


def test_audio_token_count_is_what_the_audio_encoder_gives(qwen3_loaded):
    encoder = qwen3_loaded.model.thinker.model
    for frames in (99, 100, 101, 250, 801, 1234):
        features = torch.randn(1, 128, frames)
        out = encoder.get_audio_features(features, torch.ones(1, frames, dtype=torch.long)).last_hidden_state
        assert out.shape[0] == qwen3_audio_token_count(frames)


@pytest.mark.parametrize("seconds", [(3.3,), (9.1, 3.3), (0.7, 12.0, 2.0)])
def test_text_audio_and_image_inputs_are_transformers(ours, reference, seconds):
    audio = [speech_like(s, seed=i) for i, s in enumerate(seconds)]
    content = [{"type": "audio"} for _ in audio[:-1]] + [{"type": "image"}, {"type": "text", "text": "hi"}, {"type": "audio"}]
    text = ours.apply_chat_template([{"role": "user", "content": content}])
    picture = image(90, 120, seed=3)
    a = ours(text=text, audio=audio, images=[picture])
    b = reference(text=text, audio=audio, images=[picture], return_tensors="pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@settings(max_examples=60, deadline=None)
@given(
    grid_t=st.integers(1, 12),
    grid_hw=st.sampled_from([(2, 2), (4, 6), (8, 8)]),
    seconds_per_grid=st.sampled_from([0.5, 1.0, 2.0]),
    audio_tokens=st.integers(0, 400),
)
def test_video_with_its_sound_is_laid_out_as_transformers(ours, reference, grid_t, grid_hw, seconds_per_grid, audio_tokens):
    grid = {"video_grid_thw": torch.tensor([[grid_t, *grid_hw]]), "video_second_per_grid": [seconds_per_grid]}
    theirs = reference.replace_video_with_audio_token(
        grid, 0, {"num_audio_tokens": [audio_tokens]}, 0, position_id_per_seconds=ours.position_ids_per_second
    )
    layout = ours.video_audio_layout(grid_t, grid_hw[0] * grid_hw[1] // 4, seconds_per_grid, audio_tokens)
    tokens = {"video": ours.video_token, "audio": ours.audio_token}
    assert theirs == ours.audio_bos_token + "".join(tokens[m] * n for m, n in layout) + ours.audio_eos_token
    assert all(n > 0 for _, n in layout)
