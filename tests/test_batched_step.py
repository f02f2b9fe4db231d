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
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_session import assert_same_choices

from model import constants as C
from model.engine import batch_cache, kv_cache
from model.engine.batched_step import DecodeStep, Step, run_steps
from model.engine.events import AnswerDone, AnswerSettings, TextDelta
from model.engine.sampling import Sampling
from model.inputs.conversation import Text
from model.session import OmniSession
from omni_demo.cache_budget import CacheBudget, bytes_per_position
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


@settings(EXAMPLES, max_examples=6)
@given(plan=conversations)
def test_answers_on_static_caches_equal_each_alone_through_the_batch_cache(loaded, solos, plan):
    """A GPU's case: every conversation on a static cache, so every batched step runs on the worker's batch
    cache, kept across rounds while answers arrive, are cut off (their caches rewound) and end."""
    check_schedule(loaded, [dict(p, decode="static") for p in plan], solos)


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


def answered_together(loaded, settings: AnswerSettings, hooks: list) -> list[list]:
    """Each question's answer events, the three answers made together on a worker run round by round;
    `hooks` (module, list): the batch size of each call of each module is appended to its list."""
    events = [[] for _ in QUESTIONS]

    def job(session, question, out):
        session.add_user_turn(Text(question))
        yield
        for event in session.respond(settings, batched=True):
            out.append(event)
            yield event if isinstance(event, Step) else None

    def recorder(sizes):
        return lambda module, args, kwargs, out: sizes.append((args[0] if args else kwargs["inputs_embeds"]).shape[0])

    handles = [module.register_forward_hook(recorder(sizes), with_kwargs=True) for module, sizes in hooks]
    worker = ModelWorker(max_active=3, thread=False)
    try:
        for i, question in enumerate(QUESTIONS):
            worker.submit(i, job(OmniSession(loaded), question, events[i]))
        while worker.run_round():
            pass
    finally:
        for handle in handles:
            handle.remove()
    return events


def answered_alone(loaded, settings: AnswerSettings) -> list[list]:
    answers = []
    for question in QUESTIONS:
        session = OmniSession(loaded)
        session.add_user_turn(Text(question))
        answers.append(list(session.respond(settings)))
    return answers


def audio(events) -> np.ndarray:
    from model.engine.events import AudioChunk

    return np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])


def test_speech_windows_of_several_answers_are_solved_together_and_sound_the_same(loaded):
    """Three spoken answers of one length: each chunk's DiT window is solved for the three in one batch (one
    pass of the DiT for all per ODE step) and vocoded in one BigVGAN call, and each answer's audio is what it
    gets alone, within float rounding."""
    settings = replace(answer_settings(8), min_new_tokens=8, talker_max_new_tokens=60, talker_min_new_tokens=60)
    token2wav = loaded.model.token2wav
    rows, vocoded = [], []
    together = answered_together(loaded, settings, [(token2wav.code2wav_dit_model.input_embed.proj, rows),
                                                    (token2wav.code2wav_bigvgan_model, vocoded)])
    guided_halves = 2
    assert rows and set(rows) == {3 * guided_halves}  # every DiT pass ran the three windows together
    assert vocoded and set(vocoded) == {3}  # and every BigVGAN call the three chunks
    for mine, theirs in zip(together, answered_alone(loaded, settings)):
        # BigVGAN's convolutions over a batch round differently: 1.6e-4 at most, here (-76 dB).
        np.testing.assert_allclose(audio(mine), audio(theirs), atol=1e-3)


def test_qwen3_omni_frames_of_several_answers_are_predicted_together(qwen3_loaded):
    """Qwen3-Omni's code predictor (15 passes per 80 ms frame) runs once for the three answers' frames, and
    each answer's frames and audio are what it gets alone."""
    settings = replace(answer_settings(8), min_new_tokens=8, talker_max_new_tokens=12, talker_min_new_tokens=12)
    rows = []
    together = answered_together(qwen3_loaded, settings, [(qwen3_loaded.model.talker.code_predictor.model, rows)])
    assert rows and set(rows) == {3}
    for mine, theirs in zip(together, answered_alone(qwen3_loaded, settings)):
        mine_done, their_done = mine[-1], theirs[-1]
        assert_same_choices(mine_done.codes, their_done.codes, their_done.code_margins)
        if mine_done.codes == their_done.codes:
            np.testing.assert_allclose(audio(mine), audio(theirs), atol=1e-4)


def static_answers(loaded, decode: str, arrivals=(0, 0, 0)) -> tuple[list[AnswerDone], ModelWorker, list, int]:
    """The three questions answered together on `decode` caches (static ones run on the worker's batch
    cache), each arriving in its round; the batch sizes of the thinker's decoder calls, and the most the
    worker's batch caches held, as the cache budget counts it."""
    budget = CacheBudget(None)
    worker = ModelWorker(max_active=3, thread=False)
    budget.counts_also(worker.batch_cache_bytes)
    held = 0
    sessions = [OmniSession(loaded, decode=decode) for _ in QUESTIONS]
    outs = [{} for _ in QUESTIONS]
    sizes: list[int] = []
    decoder = loaded.model.thinker.model.language_model
    hook = decoder.register_forward_hook(lambda module, args, kwargs, out: sizes.append(kwargs["inputs_embeds"].shape[0]),
                                         with_kwargs=True)
    try:
        round_ = 0
        while round_ <= max(arrivals) or worker.run_round():
            for i, arrives in enumerate(arrivals):
                if arrives == round_:
                    worker.submit(i, answer_job(sessions[i], QUESTIONS[i], None, outs[i]))
            worker.run_round()
            held = max(held, budget.held())
            round_ += 1
    finally:
        hook.remove()
    return [out["done"] for out in outs], worker, sizes, held


def test_static_caches_decode_on_the_batch_cache_kept_between_steps(loaded, solos):
    """Conversations with static caches (a GPU's) decode on the worker's batch cache: built once and then
    only stepped while the same answers decode (one arriving late takes a free row), in fixed shapes (four
    rows for three answers), each answer what it is alone; let go when nobody answers."""
    dones, worker, sizes, held = static_answers(loaded, "static", arrivals=(0, 0, 3))
    batches = worker._batch_caches
    assert 4 in sizes and 3 not in sizes  # three answers run as a batch of four rows
    # For each decoder (the thinker's, the talker's): built when the first two met, and again when the third
    # came (two rows to four); never while the same answers went on, nor when one skipped a round.
    assert batches.builds == 4 and batches.steps >= 4 * batches.builds
    for done, question in zip(dones, QUESTIONS):
        solo = alone(loaded, question, False, solos)
        assert_same_choices(done.tokens, solo.tokens, solo.token_margins)
        if done.tokens == solo.tokens:
            assert_same_choices(done.codes, solo.codes, solo.code_margins)
    # The budget counted the batch caches (the thinker's and the talker's, four rows each at most) ...
    assert 0 < held <= 4 * 2 * batch_cache.MIN_POSITIONS * bytes_per_position(loaded)
    assert not batches._batches and worker.batch_cache_bytes() == 0  # ... and nobody answers: let go


def test_a_conversation_changed_outside_the_batch_is_copied_again(loaded):
    """A row's conversation whose cache changed outside the batch (its last position taken back and another
    token fed there alone, as a live window redone does: same length, other content) is not stepped on its
    old row: the batch is built again, and the step gives what that conversation gives on its own."""
    sessions = [OmniSession(loaded, decode="static") for _ in range(2)]
    twin = OmniSession(loaded, decode="growing")  # the first conversation, on its own
    for session, question in zip([*sessions, twin], [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]]):
        session.add_user_turn(Text(question))
    streams = [session.thinker for session in sessions]
    caches = batch_cache.BatchCaches()

    def together(tokens: list[int]) -> list[torch.Tensor]:
        steps = [stream.step_request(token) for stream, token in zip(streams, tokens)]
        run_steps(steps, caches=caches)
        return [step.result[0] for step in steps]

    together([11, 12])
    twin.thinker.step(11)
    before = streams[0].mark()
    together([13, 14])
    assert caches.builds == 1  # the second step ran on the batch's cache as it was
    streams[0].rewind(before)
    streams[0].step(15)
    twin.thinker.step(15)
    logits = together([16, 17])[0]
    torch.testing.assert_close(logits, twin.thinker.step(16)[0], rtol=1e-4, atol=1e-4)
    assert caches.builds == 2


def test_the_compiled_batch_step_answers_as_the_eager_one_on_cpu(loaded, caplog):
    """torch.compile (inductor's CPU code) of the batch cache's step, one graph per batch size and length
    bucket (CUDA graphs on a GPU): the same answers as the eager batch step."""
    eager, *_ = static_answers(loaded, "static", arrivals=(0, 0, 3))
    torch._dynamo.reset()
    with caplog.at_level("WARNING", logger="model.engine.batch_cache"):
        compiled, worker, sizes, _ = static_answers(loaded, "compiled", arrivals=(0, 0, 3))
    assert "batching eagerly" not in caplog.text and 4 in sizes
    decoder = loaded.model.thinker.model.language_model
    assert worker._batch_caches._compiled[id(decoder)] is not kv_cache.forward_step  # it was compiled
    for mine, theirs in zip(compiled, eager):
        assert_same_choices(mine.tokens, theirs.tokens, theirs.token_margins)
        if mine.tokens == theirs.tokens:
            assert_same_choices(mine.codes, theirs.codes, theirs.code_margins)


def test_a_batch_step_the_compiler_fails_on_runs_eagerly(loaded, solos, monkeypatch, caplog):
    def broken(*args, **kwargs):
        def step(module, cache, *rest, **extra):
            for layer in cache.layers:  # a failure after part of the step was written
                layer.cumulative_length.add_(1)
            raise RuntimeError("inductor: no C++ compiler")

        return step

    monkeypatch.setattr(batch_cache.torch, "compile", broken)
    monkeypatch.setattr(kv_cache, "compiled_step", lambda module: kv_cache.forward_step)  # lone steps: eager here
    with caplog.at_level("WARNING"):
        dones, *_ = static_answers(loaded, "compiled")
    assert "batching eagerly" in caplog.text
    for done, question in zip(dones, QUESTIONS):
        solo = alone(loaded, question, False, solos)
        assert_same_choices(done.tokens, solo.tokens, solo.token_margins)


@settings(EXAMPLES, max_examples=3)
@given(plan=conversations)
def test_qwen3_omni_answers_on_static_caches_equal_each_alone_through_the_batch_cache(qwen3_loaded, solos, plan):
    check_schedule(qwen3_loaded, [dict(p, decode="static") for p in plan], solos)
