"""The engine as it runs on a GPU, on this CPU: thinker and talker in bfloat16, token2wav in float32.

Against transformers' generate on the same bfloat16 weights: the same prompt, the same greedy tokens and codes
wherever the choice is not a near-tie (bfloat16 keeps 8 bits of mantissa, so two equivalent summation orders
may differ by a few hundredths on logits of O(10)), and, where the codes agree, the same waveform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import constants as C
from model.engine.events import AnswerDone, AnswerSettings, AudioChunk
from model.engine.sampling import Sampling
from model.reference import TalkerSampling, reference_generate
from model.session import OmniSession

BF16_MARGIN_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def loaded_bf16(tiny_dir):
    from model.loading import load_omni

    return load_omni(str(tiny_dir), device="cpu", dtype=torch.bfloat16)


def first_difference(ours: list[int], theirs: list[int], margins: list[float]) -> int | None:
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            assert margins[i] < BF16_MARGIN_TOLERANCE, f"step {i}: {a} != {b} with margin {margins[i]:.3f}"
            return i
    assert len(ours) == len(theirs)
    return None


@pytest.mark.parametrize("case", ["text", "audio"])
def test_bfloat16_engine_answers_as_transformers_does(loaded_bf16, case):
    from model import cases

    loaded = loaded_bf16
    assert loaded.model.thinker.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.talker.codec_head.weight.dtype == torch.bfloat16
    assert next(loaded.model.token2wav.parameters()).dtype == torch.float32
    conversation = cases.SINGLE_TURN_CASES[case]()
    session = OmniSession(loaded)
    session.add_user_turn(*conversation.turns[0].parts)
    settings = AnswerSettings(
        max_new_tokens=16,
        talker=Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
        noise_seed=0,
        first_chunk_frames=48,  # a short answer in one window: transformers' own decode
        margins=True,
    )
    events = list(session.respond(settings))
    done = events[-1]
    assert isinstance(done, AnswerDone)
    reference = reference_generate(
        loaded, conversation, max_new_tokens=16, talker=TalkerSampling(greedy=True), noise_seed=0
    )
    assert session.thinker.ids[: len(reference.prompt_ids)] == reference.prompt_ids
    audio = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    assert len(audio) == len(done.codes) * 2 * 240  # every code's two mel frames, 240 samples each
    same_tokens = first_difference(done.tokens, reference.thinker_tokens, done.token_margins) is None
    if same_tokens and first_difference(done.codes, reference.talker_codes, done.code_margins) is None:
        np.testing.assert_array_equal(audio, reference.waveform)
