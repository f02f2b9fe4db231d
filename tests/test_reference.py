"""The reference harness: transformers' full generate on the tiny model, for every input case."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HARNESS_CASES

from model import constants as C
from model.families.qwen2_5_omni.reference import TalkerSampling, reference_generate, prepare_inputs

SAMPLES_PER_CODE = C.OUTPUT_SAMPLE_RATE // C.CODES_PER_SECOND  # 480: 2 mel frames x 240 samples


@pytest.mark.parametrize("case", HARNESS_CASES)
def test_every_case_reaches_a_24khz_waveform(harness, case):
    result = harness.result(case)
    assert 0 < len(result.thinker_tokens) <= harness.max_new_tokens
    assert result.talker_codes, "the talker produced no codes"
    assert max(result.talker_codes) < C.DIT_NUM_EMBEDS
    assert result.waveform.dtype == np.float32 and np.isfinite(result.waveform).all()
    assert len(result.waveform) == SAMPLES_PER_CODE * len(result.talker_codes)


@pytest.mark.parametrize(
    "case, token_id",
    [
        ("audio", C.AUDIO_TOKEN_ID),
        ("image", C.IMAGE_TOKEN_ID),
        ("video_with_sound", C.VIDEO_TOKEN_ID),
        ("video_with_sound", C.AUDIO_TOKEN_ID),
        ("silent_video", C.VIDEO_TOKEN_ID),
    ],
)
def test_media_reach_the_prompt(harness, case, token_id):
    assert token_id in harness.result(case).prompt_ids


def test_silent_video_has_no_audio_tokens(harness):
    assert C.AUDIO_TOKEN_ID not in harness.result("silent_video").prompt_ids


def test_second_turn_prompt_extends_the_first(harness):
    first, second = harness.result("text"), harness.result("second_turn")
    assert second.prompt_ids[: len(first.prompt_ids)] == first.prompt_ids
    assert len(second.prompt_ids) > len(first.prompt_ids) + len(first.thinker_tokens)


def test_reference_is_reproducible(harness, loaded):
    again = reference_generate(
        loaded,
        harness.conversation("audio"),
        max_new_tokens=harness.max_new_tokens,
        talker=TalkerSampling(greedy=True),
        noise_seed=harness.noise_seed,
    )
    first = harness.result("audio")
    assert again.thinker_tokens == first.thinker_tokens
    assert again.talker_codes == first.talker_codes
    np.testing.assert_array_equal(again.waveform, first.waveform)


def test_voice_changes_the_speech_not_the_text(harness):
    chelsie, ethan = harness.result("text", "Chelsie"), harness.result("text", "Ethan")
    assert chelsie.thinker_tokens == ethan.thinker_tokens
    assert chelsie.talker_codes != ethan.talker_codes or not np.allclose(chelsie.waveform, ethan.waveform)


def test_text_only_answer_has_no_audio(harness, loaded):
    result = reference_generate(loaded, harness.conversation("text"), text_only=True, max_new_tokens=8)
    assert result.waveform is None and result.talker_codes == []
    assert result.thinker_tokens == harness.result("text").thinker_tokens[:8]


def test_prompt_uses_the_audio_system_prompt(harness, loaded):
    inputs = prepare_inputs(loaded.processor, harness.conversation("text"))
    text = loaded.processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith(f"<|im_start|>system\n{C.AUDIO_SYSTEM_PROMPT}<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
