"""Answers decoded together, one forward per decoder for all of them (model/engine/batched_step.py, run by
the model worker's rounds), give each conversation what it gives alone: the same greedy tokens and codes,
whichever round each arrives in, whether it is cut off, whether its conversation was restored from history,
and whichever kind of cache it has. Schedules are searched by hypothesis, on the real worker run round by round from the test.

Rows of a batch may round differently from a lone forward (the matrix kernels block a batch differently):
where a choice differs, its top-2 margin alone must have been within float error (assert_same_choices)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_session import assert_same_choices

from model import constants as C
from model.engine.batched_step import DecodeStep, Step, run_steps
from model.engine.events import AnswerDone, AnswerSettings, TextDelta
from model.engine.sampling import Sampling
from model.inputs.conversation import Text
from model.session import OmniSession
from omni_demo.worker import ModelWorker

QUESTIONS = ("What is two plus two?", "Tell me about the sea, and the ships on it.", "Hi")
EARLIER = "Hello there."  # a restored conversation's earlier exchange
EXAMPLES = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,  # the same schedules in every CI run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def answer_settings(tokens: int = 10) -> AnswerSettings:
    return AnswerSettings(
        max_new_tokens=tokens,
        talker_max_new_tokens=24,
        thinker=Sampling(greedy=True),
        talker=Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
        noise_seed=0,
        margins=True,
    )


def conversation(loaded, restored: bool, decode: str = "growing") -> OmniSession:
    session = OmniSession(loaded, decode=decode)
    if restored:
        earlier = OmniSession(loaded)
        earlier.add_user_turn(Text(EARLIER))
        for _ in earlier.respond(answer_settings(4)):
            pass
        session.restore(earlier.history)
    return session


def alone(loaded, question: str, restored: bool, cache: dict) -> AnswerDone:
    key = (id(loaded), question, restored)
    if key not in cache:
        session = conversation(loaded, restored)
        session.add_user_turn(Text(question))
        cache[key] = [e for e in session.respond(answer_settings()) if isinstance(e, AnswerDone)][0]
    return cache[key]


def answer_job(session: OmniSession, question: str, cut_after: int | None, out: dict):
    """What the app's tab does for a typed turn (omni_demo/tab_model.py): the turn, then the answer, its
    decode steps handed to the worker."""
    session.add_user_turn(Text(question))
    yield
    tokens = 0
    for event in session.respond(answer_settings(), batched=True):
        if isinstance(event, Step):
            yield event
            continue
        if isinstance(event, TextDelta):
            tokens += 1
            if cut_after is not None and tokens >= cut_after:
                session.interrupt()  # the user cut in
        if isinstance(event, AnswerDone):
            out["done"] = event
        yield


conversations = st.lists(
    st.fixed_dictionaries({
        "question": st.sampled_from(QUESTIONS),
        "arrives": st.integers(0, 12),  # the round its turn reaches the worker
        "cut_after": st.none() | st.integers(1, 6),  # tokens, then the user cuts in
        "restored": st.booleans(),
        "decode": st.sampled_from(["growing", "static"]),  # the cache kinds (a GPU's is static), mixed in a batch
    }),
    min_size=2,
    max_size=4,
)


def check_schedule(loaded, plan: list[dict], cache: dict) -> None:
    worker = ModelWorker(max_active=4, thread=False)
    sessions = [conversation(loaded, p["restored"], p["decode"]) for p in plan]
    outs = [{} for _ in plan]
    round_ = 0
    while round_ <= max(p["arrives"] for p in plan) or worker.run_round():
        for i, p in enumerate(plan):
            if p["arrives"] == round_:
                worker.submit(i, answer_job(sessions[i], p["question"], p["cut_after"], outs[i]))
        worker.run_round()
        round_ += 1
    for p, out in zip(plan, outs):
        solo, done = alone(loaded, p["question"], p["restored"], cache), out["done"]
        if p["cut_after"] is None:
            assert_same_choices(done.tokens, solo.tokens, solo.token_margins)
            if done.tokens == solo.tokens:
                assert_same_choices(done.codes, solo.codes, solo.code_margins)
        else:  # what was said before the cut is what it says alone
            assert done.interrupted or len(done.tokens) == len(solo.tokens)
            assert_same_choices(done.tokens, solo.tokens[: len(done.tokens)], solo.token_margins)


@pytest.fixture(scope="module")
def solos() -> dict:
    return {}


@EXAMPLES
@given(plan=conversations)
def test_answers_decoded_together_equal_each_alone(loaded, solos, plan):
    check_schedule(loaded, plan, solos)


@settings(EXAMPLES, max_examples=4)
@given(plan=conversations)
def test_qwen3_omni_answers_decoded_together_equal_each_alone(qwen3_loaded, solos, plan):
    check_schedule(qwen3_loaded, plan, solos)


def test_a_batch_really_is_one_forward(loaded):
    """Three answers' thinker steps in one round: one call of the thinker's decoder, three rows."""
    sessions = [OmniSession(loaded) for _ in QUESTIONS]
    steps = []
    for session, question in zip(sessions, QUESTIONS):
        session.add_user_turn(Text(question))
        events = session.respond(AnswerSettings(text_only=True, max_new_tokens=4, thinker=Sampling(greedy=True)), batched=True)
        steps.append(next(e for e in events if isinstance(e, DecodeStep)))
    decoder = steps[0].module
    calls = []
    hook = decoder.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["inputs_embeds"].shape[0]),
                                         with_kwargs=True)
    try:
        run_steps(steps)
    finally:
        hook.remove()
    assert calls == [3] and all(step.ran for step in steps)
    lengths = [session.thinker.length for session in sessions]
    assert [step.cache.get_seq_length() for step in steps] == lengths  # each row's keys went to its own cache


def test_speech_windows_of_several_answers_are_solved_together_and_sound_the_same(loaded):
    """Three spoken answers of one length: each chunk's DiT window is solved for the three in one batch (one
    pass of the DiT for all per ODE step), and each answer's audio is what it gets alone."""
    from model.engine.events import AudioChunk

    settings = replace(answer_settings(8), min_new_tokens=8, talker_max_new_tokens=60, talker_min_new_tokens=60)

    def audio(events) -> np.ndarray:
        return np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])

    alone = []
    for question in QUESTIONS:
        session = OmniSession(loaded)
        session.add_user_turn(Text(question))
        alone.append(audio(session.respond(settings)))

    events = [[] for _ in QUESTIONS]

    def job(session, question, out):
        session.add_user_turn(Text(question))
        yield
        for event in session.respond(settings, batched=True):
            out.append(event)
            yield event if isinstance(event, Step) else None

    rows = []
    dit = loaded.model.token2wav.code2wav_dit_model
    hook = dit.input_embed.proj.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    worker = ModelWorker(max_active=3, thread=False)
    try:
        for i, question in enumerate(QUESTIONS):
            worker.submit(i, job(OmniSession(loaded), question, events[i]))
        while worker.run_round():
            pass
    finally:
        hook.remove()
    guided_halves = 2
    assert rows and set(rows) == {3 * guided_halves}  # every DiT pass ran the three windows together
    for mine, theirs in zip(events, alone):
        together = audio(mine)
        assert together.shape == theirs.shape
        np.testing.assert_allclose(together, theirs, atol=1e-4)
