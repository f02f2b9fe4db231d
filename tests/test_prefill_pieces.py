"""A whole turn prefilled in pieces (OmniSession.adding_user_turn, ThinkerStream.prefill_pieces): the model
worker runs the other conversations' steps between its pieces, so an upload never holds their speech, and
what lands in the caches is the one-pass prefill's (up to float rounding: each piece attends to the ones
before it through the cache). A restore feeds its live turns a window's time per step likewise."""

from __future__ import annotations

import math
import time
from itertools import pairwise

import numpy as np
import pytest
import torch
from test_batched_step import answer_settings
from test_live_session import new_session
from test_session import assert_same_choices

from model.engine import session as session_module
from model.engine.history import LiveTurn
from model.inputs import cases
from model.inputs.conversation import Text
from model.session import OmniSession
from omni_demo.worker import ModelWorker

WHOLE = 10**6  # a piece larger than any turn here: one forward pass
CLOSE = {"rtol": 1e-4, "atol": 1e-4}  # float rounding of attention over a cache instead of within one pass


@pytest.fixture(params=["qwen2.5", "qwen3"])
def family(request):
    return request.getfixturevalue("loaded" if request.param == "qwen2.5" else "qwen3_loaded")


def parts_of(case: str):
    return cases.SINGLE_TURN_CASES[case]().turns[0].parts


def prefilled(loaded, parts, piece: int) -> tuple[OmniSession, int]:
    """A session with the turn prefilled in pieces of `piece` positions, and how many steps that took."""
    session = OmniSession(loaded, prefill_piece=piece)
    steps = sum(1 for _ in session.adding_user_turn(*parts))
    return session, steps


def answered(session: OmniSession):
    return [e for e in session.respond(answer_settings(8))][-1]


@pytest.mark.parametrize("case", ["image", "video_with_sound"])  # vision (Qwen3-Omni's deepstack), sound
@pytest.mark.parametrize("piece", [7, 64])
def test_a_turn_in_pieces_is_the_turn_in_one_pass(family, case, piece):
    parts = parts_of(case)
    whole, none = prefilled(family, parts, WHOLE)
    pieces, steps = prefilled(family, parts, piece)
    length = whole.thinker.length
    assert none == 0 and length > piece
    assert steps == math.ceil(length / piece)  # the encoders' step, then one between every two pieces
    assert pieces.thinker.ids == whole.thinker.ids
    assert pieces.thinker.cache.get_seq_length() == length
    torch.testing.assert_close(pieces._logits, whole._logits, **CLOSE)
    for ours, theirs in zip(pieces.thinker.cache.layers, whole.thinker.cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, **CLOSE)
        torch.testing.assert_close(ours.values, theirs.values, **CLOSE)
    for ours, theirs in zip(pieces.thinker.talker_states, whole.thinker.talker_states, strict=True):
        torch.testing.assert_close(ours, theirs, **CLOSE)  # what the talker speaks from (Qwen3: a layer's states)
    ours, theirs = answered(pieces), answered(whole)
    assert_same_choices(ours.tokens, theirs.tokens, ours.token_margins)
    if ours.tokens == theirs.tokens:
        assert_same_choices(ours.codes, theirs.codes, ours.code_margins)


def test_a_turn_closed_between_pieces_leaves_the_conversation_as_it_was(qwen3_loaded):
    """A tab closed (or a job cancelled) in the middle of an upload's prefill: the caches hold nothing of it,
    and the conversation goes on as if it had never been sent."""
    parts = parts_of("image")
    kept, fresh = OmniSession(qwen3_loaded, prefill_piece=16), OmniSession(qwen3_loaded, prefill_piece=16)
    for session in (kept, fresh):
        session.add_user_turn(Text("Hello there."))
        answered(session)
    # What the caches may hold afterwards: the conversation so far and its last answer's closing token.
    expected, history = kept.thinker.ids + kept._closing, kept.history
    steps = kept.adding_user_turn(*parts)
    next(steps), next(steps), next(steps)  # the encoders, then two pieces in the cache
    steps.close()
    assert kept.thinker.ids == expected and kept.thinker.cache.get_seq_length() == len(expected)
    assert kept.history == history
    for session in (kept, fresh):
        session.add_user_turn(*parts)
    assert kept.thinker.ids == fresh.thinker.ids
    ours, theirs = answered(kept), answered(fresh)
    assert ours.tokens == theirs.tokens and ours.codes == theirs.codes


def test_the_worker_answers_others_between_an_uploads_pieces(loaded, monkeypatch):
    """Through the app's own sessions and worker: tab B is answering when tab A sends a video. The thinker's
    forward passes show one piece of A's prefill per round, with B's decode step beside it, until B's answer
    is done; B's answer is what it is alone."""
    monkeypatch.setattr(session_module, "PREFILL_PIECE", 32)
    forwards: list[int] = []  # positions of each thinker forward pass, in order (1: a decode step)
    language_model = loaded.model.thinker.model.language_model
    hook = language_model.register_forward_pre_hook(
        lambda module, args, kwargs: forwards.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    worker = ModelWorker(max_active=2)
    try:
        alone = new_session(loaded, worker, "alone", text_only=True)
        alone.update(max_new_tokens=24)
        alone.send("Tell me about the sea.", [])
        assert worker.idle(120)
        a = new_session(loaded, worker, "a", text_only=True)
        b = new_session(loaded, worker, "b", text_only=True)
        b.update(max_new_tokens=24)
        b.send("Tell me about the sea.", [])
        deadline = time.monotonic() + 60
        while not b.answer.tokens and time.monotonic() < deadline:
            time.sleep(0.005)
        start = len(forwards)
        a.send("What is in this video?", [str(cases.ASSETS / "clip_with_audio.mp4")])
        assert worker.idle(300)
    finally:
        hook.remove()
        worker.stop()
    assert a.answer.finished and a.answer.tokens and b.answer.tokens == alone.answer.tokens
    log = forwards[start:]
    pieces = [i for i, n in enumerate(log) if n > 1]  # A's prompt; B's and A's decode steps are 1 position each
    assert [log[i] for i in pieces[:-1]] == [32] * (len(pieces) - 1)
    b_last = max(i for i, n in enumerate(log[: pieces[-1]]) if n == 1)
    between = [log[i + 1 : j].count(1) for i, j in pairwise(pieces) if j <= b_last]
    assert len(between) >= 5 and all(count >= 1 for count in between)  # B never waited for two pieces


def test_a_restore_feeds_its_live_turns_a_window_per_step(loaded, assets):
    """A rebuilt conversation's live turn goes a window's time per worker step, and the caches it rebuilds are
    the ones the turn built live."""
    import soundfile

    sound, rate = soundfile.read(assets / "question.wav", dtype="float32")
    assert rate == 16000
    audio = np.concatenate([sound, sound, sound])  # 8.7 s: five windows
    live = OmniSession(loaded)
    for start in range(0, len(audio), 1600):
        live.feed_audio(audio[start : start + 1600])
    live.end_user_turn()
    answered(live)
    assert isinstance(live.history[0], LiveTurn)
    rebuilt = OmniSession(loaded)
    steps = sum(1 for _ in rebuilt.restoring(live.history))
    assert steps == math.ceil(len(audio) / 32000) + 1 + 1  # its windows, the turn's end, the answer
    assert rebuilt.thinker.ids == live.thinker.ids
    for ours, theirs in zip(rebuilt.thinker.cache.layers, live.thinker.cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, **CLOSE)
