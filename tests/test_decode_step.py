"""The fixed-shape decode path (model/engine/kv_cache.py): a static KV cache, and its one-token steps through
torch.compile, give the answers the growing cache gives, through every rewind the session does (a live window
redone, an answer cut short and kept in part, a second turn), and a cache that outgrows its allocation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_session import assert_same_choices

from model import constants as C
from model.engine.events import AnswerDone, AnswerSettings, AudioChunk
from model.engine.kv_cache import GrowingKV, StaticKV
from model.engine.sampling import Sampling
from model.engine.thinker_stream import ThinkerStream
from model.inputs.conversation import Audio, Text
from model.session import OmniSession

RATE = C.INPUT_SAMPLE_RATE


def settings(**overrides) -> AnswerSettings:
    base = {
        "max_new_tokens": 12,
        "talker": Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
        "noise_seed": 0,
        "margins": True,
    }
    base.update(overrides)
    return AnswerSettings(**base)


def answer(session: OmniSession, **overrides):
    events = list(session.respond(settings(**overrides)))
    done = events[-1]
    assert isinstance(done, AnswerDone)
    audio = [e.samples for e in events if isinstance(e, AudioChunk)]
    return done, np.concatenate(audio) if audio else np.zeros(0, np.float32)


def conversation(loaded, decode: str, speech: np.ndarray, frame: np.ndarray) -> list:
    """A conversation that makes the session rewind its caches every way it does."""
    session = OmniSession(loaded, decode=decode)
    assert session.decode == decode
    outcomes = []
    # A live turn whose camera frame arrives late: the windows already prefilled are rolled back and redone.
    session.feed_audio(speech[: 3 * RATE])
    session.feed_frame(frame, 0.2)
    session.feed_audio(speech[3 * RATE :])
    session.end_user_turn()
    outcomes.append(answer(session))
    # Cut in after a few tokens: the answer is kept up to there.
    session.keep_answer(5)
    session.add_user_turn(Text("And then?"))
    outcomes.append(answer(session, max_new_tokens=8))
    session.add_user_turn(Audio(speech[: 2 * RATE]))
    outcomes.append(answer(session, text_only=True))
    outcomes.append(session.thinker.ids)
    return outcomes


@pytest.fixture(scope="module")
def speech(assets):
    import soundfile

    samples, rate = soundfile.read(assets / "question.wav", dtype="float32")
    assert rate == RATE
    return np.concatenate([samples, samples])[: 5 * RATE]


@pytest.fixture(scope="module")
def frame():
    return np.random.default_rng(3).integers(0, 255, (224, 224, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def growing(loaded, speech, frame):
    return conversation(loaded, "growing", speech, frame)


def assert_same_conversation(ours: list, theirs: list) -> None:
    for (done, audio), (expected, expected_audio) in zip(ours[:-1], theirs[:-1]):
        assert_same_choices(done.tokens, expected.tokens, done.token_margins)
        if done.tokens != expected.tokens:
            return  # a near-tie flipped: the rest is a different, equally valid, conversation
        assert_same_choices(done.codes, expected.codes, done.code_margins)
        if done.codes == expected.codes:
            np.testing.assert_array_equal(audio, expected_audio)  # the same codes and noise: the same speech
    assert ours[-1] == theirs[-1]  # every token in the cache, in order


def test_static_cache_answers_as_the_growing_one(loaded, growing, speech, frame):
    assert_same_conversation(conversation(loaded, "static", speech, frame), growing)


def test_compiled_steps_answer_as_eager_ones_on_cpu(loaded, growing, speech, frame):
    """torch.compile (inductor's CPU code) of the thinker's and the talker's one-token step."""
    torch._dynamo.reset()
    assert_same_conversation(conversation(loaded, "compiled", speech, frame), growing)


def test_a_static_cache_that_outgrows_its_allocation_grows(loaded):
    thinker = loaded.model.thinker
    config = thinker.config.text_config
    growing, small = ThinkerStream(thinker, GrowingKV(config)), ThinkerStream(thinker, StaticKV(config, length=8))
    ids = loaded.processor.tokenizer("<|im_start|>user\nA prompt longer than eight tokens, then steps.").input_ids
    expected, got = growing.prefill(growing.text_segment(ids)), small.prefill(small.text_segment(ids))
    for _ in range(12):  # past 16, then 32 positions
        token = int(expected.argmax())
        assert int(got.argmax()) == token
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        expected, got = growing.step(token)[0], small.step(token)[0]
    assert small.cache.size == 32 and small.cache.get_seq_length() == len(ids) + 12
    small.rewind((len(ids), 1, growing.mark()[2] - 12))  # back to the prompt: the steps are forgotten
    assert small.cache.get_seq_length() == len(ids)


def test_auto_decode_is_growing_on_cpu(loaded):
    assert OmniSession(loaded).decode == "growing"
    with pytest.raises(ValueError):
        OmniSession(loaded, decode="fast")


def test_a_step_the_compiler_fails_on_is_decoded_eagerly(loaded, growing, speech, frame, monkeypatch, caplog):
    from model.engine import kv_cache

    def broken(module):
        def step(module, cache, embeds, position_ids):
            for layer in cache.layers:  # a failure after part of the step was written
                if layer.is_initialized:
                    layer.cumulative_length.add_(1)
            raise RuntimeError("inductor: no C++ compiler")

        return step

    monkeypatch.setattr(kv_cache, "compiled_step", broken)
    with caplog.at_level("WARNING", logger="model.engine.kv_cache"):
        assert_same_conversation(conversation(loaded, "compiled", speech, frame), growing)
    assert "decoding eagerly" in caplog.text
