"""The engine as it runs on a GPU, on this CPU: thinker and talker in bfloat16, token2wav in float32.

Against transformers' generate on the same bfloat16 weights, through the comparison the GPU check runs
(bench/parity.py): the same prompt, the same greedy tokens and codes wherever the choice is not a near-tie
(bfloat16 keeps 8 bits of mantissa, so two equivalent summation orders may differ by a few hundredths on
logits of O(10)), and, where the codes agree, the same waveform."""

from __future__ import annotations

import pytest
import torch

from bench.parity import compare

BF16_MARGIN_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def loaded_bf16(tiny_dir):
    from model.loading import load_omni

    return load_omni(str(tiny_dir), device="cpu", dtype=torch.bfloat16)


def assert_parts_only_at_a_near_tie(part: dict | None) -> bool:
    """True where the two agree; where they part, the engine's margin there must be a near-tie."""
    if part is None:
        return True
    assert part["margin"] is not None and part["margin"] < BF16_MARGIN_TOLERANCE, part
    return False


@pytest.mark.parametrize("case", ["text", "audio"])
def test_bfloat16_engine_answers_as_transformers_does(loaded_bf16, case):
    loaded = loaded_bf16
    assert loaded.model.thinker.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.talker.codec_head.weight.dtype == torch.bfloat16
    assert next(loaded.model.token2wav.parameters()).dtype == torch.float32
    result = compare(loaded, case, tokens=16)
    assert result["prompt_equal"]
    assert result["audio_finite"] and result["audio_samples"] == result["codes"] * 2 * 240  # 2 mel frames a code
    if assert_parts_only_at_a_near_tie(result["tokens_part"]) and assert_parts_only_at_a_near_tie(result["codes_part"]):
        assert result["waveform_equal"]  # the same codes and noise in one window: transformers' samples
