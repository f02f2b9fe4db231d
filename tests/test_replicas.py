"""The model on Ray replicas (omni_demo/replicas.py, replica.py, remote_session.py): a local Ray instance with
two CPU replicas of the tiny checkpoint, the page's side (handlers, listener, view, history) in this process
with no weights, as `python app.py --replicas 2` runs it. The answers are checked token for token against
the engine in this process on the same conversations."""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pytest
from speech import silence, speech_48k
from test_live_session import finish, speak

from model.inputs.conversation import Text
from model.loading import load_omni
from model.session import AnswerSettings, AnswerTurn, LiveTurn, OmniSession, TextDelta, UserTurn
from omni_demo.live import LiveSession
from omni_demo.replica import Replica
from omni_demo.replicas import LOST_MESSAGE, Replicas
from omni_demo.worker import ModelWorker

ray = pytest.importorskip("ray")

TABS = 8


@pytest.fixture(scope="module")
def replicas(tiny_dir):
    started = Replicas.start(str(tiny_dir), count=2, device="cpu",
                             ray_init={"num_cpus": 2, "log_to_driver": False})
    yield started
    started.stop()
    ray.shutdown()


@pytest.fixture(scope="module")
def page_loaded(replicas):
    """What the page process loads: the processor, voices and config, and no weights."""
    return load_omni(replicas.source(), device="meta")


@pytest.fixture
def page_worker():
    worker = ModelWorker(max_active=TABS)
    yield worker
    worker.stop()


def open_tab(page_loaded, page_worker, replicas, key: str, seed: int, text_only: bool = True) -> LiveSession:
    live = LiveSession(key, page_loaded, page_worker, echo_cancel=False, replicas=replicas)
    live.update(max_new_tokens=8, seed=seed, text_only=text_only)
    return live


def local_answers(loaded, live: LiveSession) -> list[list[int]]:
    """The same conversation in this process's engine: each answer's tokens, given the same user turns."""
    session = OmniSession(loaded)
    answers = []
    for record in live.model.history:
        if isinstance(record, LiveTurn):
            session.feed(record.audio, record.frames)
            session.end_user_turn()
        elif isinstance(record, UserTurn):
            session.add_user_turn(*record.parts)
        else:
            answers.append([e.token for e in session.respond(live.settings.answer_settings()) if isinstance(e, TextDelta)])
            session.keep_answer(len(record.tokens))
    return answers


def page_answers(live: LiveSession) -> list[list[int]]:
    return [list(record.tokens) for record in live.model.history if isinstance(record, AnswerTurn)]


def wait_until(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what} took over {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_eight_tabs_over_two_replicas_each_get_their_own_answers(loaded, page_loaded, page_worker, replicas):
    tabs = [open_tab(page_loaded, page_worker, replicas, f"tab-{i}", seed=i, text_only=i > 0) for i in range(TABS)]
    question = np.concatenate([silence(0.3), speech_48k(), silence(1.0)])
    for live in tabs:  # a spoken question each, its windows prefilled on the replica while it is heard
        assert speak(live, question) == 1
    finish(tabs[0], page_worker)
    # Its spoken answer played to its end: a question typed while it plays would cut it where it was heard.
    spoken = tabs[0].view.answer
    wait_until(lambda: spoken.clock.playing_until() < time.monotonic(), 60, "tab-0's spoken answer playing")
    places = {live.key: live.model.replica for live in tabs}
    for i, live in enumerate(tabs):  # then a typed one each
        assert live.send(f"Question {i}: what did I say?", []) is None
    finish(tabs[0], page_worker)
    # Spread over both replicas, each tab's turns on one, its conversation here, whole.
    assert sorted(places.values()) == [0] * (TABS // 2) + [1] * (TABS // 2)
    assert {live.key: live.model.replica for live in tabs} == places
    for live in tabs:
        assert [type(r).__name__ for r in live.model.history] == ["LiveTurn", "AnswerTurn", "UserTurn", "AnswerTurn"]
        assert live.answer.finished and not live.answer.failed
        assert len(live.model.history[0].audio) > len(speech_48k()) / 3  # the whole turn, at 16 kHz
        # Every answer is the one this process's engine gives the same conversation.
        assert page_answers(live) == local_answers(loaded, live), live.key
        assert [m for m in live.chat if m["role"] == "assistant"]
    assert len(tabs[0].answer.chunks) > 0  # the one spoken answer's speech came through Ray, chunk by chunk
    for live in tabs:
        live.close()


def test_a_killed_replica_moves_its_tabs_and_their_conversations_survive(loaded, page_loaded, page_worker, replicas,
                                                                          caplog):
    caplog.set_level(logging.INFO, logger="omni_demo.replicas")
    wait_until(lambda: replicas.live() == [0, 1], 120, "both replicas up")
    tabs = [open_tab(page_loaded, page_worker, replicas, f"moving-{i}", seed=10 + i) for i in range(4)]
    for i, live in enumerate(tabs):
        assert live.send(f"First question of tab {i}.", []) is None
    finish(tabs[0], page_worker)
    before = {live.key: [type(r).__name__ for r in live.model.history] for live in tabs}
    victims = [live for live in tabs if live.model.replica == 0]
    survivors = [live for live in tabs if live.model.replica == 1]
    assert len(victims) == len(survivors) == 2
    kept = {live.key: list(live.model.history) for live in tabs}
    # A long answer each, and the replica of half of them killed (kill -9) while theirs are being made.
    for live in tabs:
        live.update(max_new_tokens=400)
        assert live.send("Tell me a long story.", []) is None
    wait_until(lambda: all(live.answer.tokens for live in victims), 120, "the victims' answers to start")
    pid = next(info["pid"] for info in replicas.infos() if info["index"] == 0)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: 0 not in replicas.live(), 30, "the loss to be noticed")
    noticed = time.monotonic() - killed
    for live in victims:
        wait_until(lambda live=live: live.answer.finished, 30, "the failed answer to end")
        assert live.answer.failed
        assert any(LOST_MESSAGE in str(m["content"]) for m in live.chat)
        # The conversation before the failure is exactly what it was.
        assert [type(r).__name__ for r in live.model.history] == before[live.key]
    # The next question: answered on the other replica, as the same conversation that never moved.
    for live in victims:
        live.update(max_new_tokens=8)
        assert live.send("Ask again: the first question.", []) is None
    asked = time.monotonic() - killed
    wait_until(lambda: all(live.answer.finished for live in victims), 120, "the moved tabs' answers")
    moved_in = time.monotonic() - killed
    for live in victims:
        assert live.model.replica == 1 and not live.answer.failed
        history = live.model.history
        assert [type(r).__name__ for r in history] == ["UserTurn", "AnswerTurn", "UserTurn", "AnswerTurn"]
        first_turn, first_answer = kept[live.key]
        assert history[0].parts == first_turn.parts and history[1].tokens == first_answer.tokens
        assert page_answers(live) == local_answers(loaded, live)
    finish(survivors[0], page_worker)
    for live in survivors:  # never touched: their long answers went on
        assert live.model.replica == 1 and live.answer.finished and not live.answer.failed
    # Ray brings the replica back; it takes new tabs.
    wait_until(lambda: 0 in replicas.live(), 180, "the replica to be restarted")
    restored = time.monotonic() - killed
    newcomer = open_tab(page_loaded, page_worker, replicas, "newcomer", seed=99)
    assert newcomer.send("Hello.", []) is None
    finish(newcomer, page_worker)
    assert newcomer.model.replica == 0 and page_answers(newcomer) == local_answers(loaded, newcomer)
    lines = [r.getMessage() for r in caplog.records if r.name == "omni_demo.replicas"]
    assert any(line.startswith("replica 0 lost") for line in lines) and any(line.startswith("replica 0 restored") for line in lines)
    print(f"\nkill -9 -> loss noticed {noticed:.2f} s; -> the moved tabs answered {moved_in:.2f} s "
          f"(asked {asked:.2f} s after the kill); the replica back (restarted by Ray) {restored:.1f} s after the kill")
    for live in [*tabs, newcomer]:
        live.close()


def test_a_replica_past_its_cache_budget_rebuilds_idle_conversations_from_their_history(tiny_dir, loaded):
    """The replica's own cache budget (here a byte: only the conversation at work keeps its caches): an
    idle one gives them back and is rebuilt from its history at its next call, answering as if it had kept
    them, and the page is sent only what the turn added. In this process, without Ray: the same class."""
    replica = Replica(str(tiny_dir), "cpu", cache_gib=1e-9)
    settings = AnswerSettings(voice=loaded.voice_names[0], text_only=True, max_new_tokens=8, seed=5)
    seqs = {"a": 0, "b": 0}

    def call(tab, name, *args):
        seqs[tab] += 1
        return replica.call(replica.incarnation, tab, seqs[tab] - 1, name, *args)

    def answer(tab):
        seqs[tab] += 1
        items = list(replica.answer(replica.incarnation, tab, seqs[tab] - 1, settings))
        return [e.token for e in items if isinstance(e, TextDelta)], items[-1]

    try:
        for tab in ("a", "b"):
            call(tab, "start", None, None, [])
            call(tab, "add_user_turn", [Text(f"First question of {tab}.")], None)
            answer(tab)
        assert replica.budget.given_back >= 1 and replica._tabs["a"].session is None  # a gave its caches back
        sync = call("a", "add_user_turn", [Text("Second question of a.")], None)
        assert sync.keep == 2 and len(sync.tail) == 1  # rebuilt: the page gets the new turn, not the history again
        tokens, _ = answer("a")
        local = OmniSession(loaded)
        expected = []
        for question in ("First question of a.", "Second question of a."):
            local.add_user_turn(Text(question))
            expected = [e.token for e in local.respond(settings) if isinstance(e, TextDelta)]
        assert tokens == expected
        assert replica._tabs["b"].session is None and replica.budget.given_back >= 2  # b's turn to give back
    finally:
        replica.worker.stop()
