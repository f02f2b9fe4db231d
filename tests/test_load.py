"""Many tabs at once against the real server on loopback (gradio_client: each client is its own session
over HTTP, with its own heartbeat), on the tiny model: every turn gets its own complete answer, answers never
cross sessions, waiting sessions are served in order, and closing the sessions gives back the memory,
threads and files they took."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from pathlib import Path

import pytest

SESSIONS = 8
TURNS = 3
SOAK_ROUNDS = 10  # rounds of SESSIONS tabs x TURNS turns, each tab closed after its turns
RSS_TOLERANCE_MIB = 64  # allocator caches and Python arenas; a leaked conversation per tab is far more


def rss_mib() -> float:
    """Resident memory once freed memory is really free: garbage collected, and glibc's heap trimmed (it
    keeps freed blocks mapped otherwise, which would read as a leak that is not one)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def serve(loaded, **defaults):
    """A server of its own, where one conversation runs at a time, so the waiting order is observable."""
    from conftest import free_port

    from omni_demo.live import ChatSettings
    from omni_demo.ui import build_app

    app = build_app(loaded, max_active=1, defaults=ChatSettings(**defaults))
    _, url, _ = app.demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, max_threads=80
    )
    return app, url


def stop(app) -> None:
    app.demo.close()
    app.sessions.close_all()
    app.worker.stop()


@pytest.fixture(scope="module")
def load_app(loaded):
    app, url = serve(loaded, max_new_tokens=8)  # short spoken answers: the load is the number of turns
    yield app, url
    stop(app)


@pytest.fixture(scope="module")
def soak_app(loaded):
    app, url = serve(loaded, max_new_tokens=4, text_only=True)
    yield app, url
    stop(app)


def clients(url: str, count: int) -> list:
    from gradio_client import Client

    return [Client(url, verbose=False) for _ in range(count)]


def session_of(app, text: str):
    found = [s for s in app.sessions._sessions.values() if any(m["content"] == text for m in s.chat)]
    return found[0] if len(found) == 1 else None


def ask_all(app, url_clients: list, turn: int, tag: str) -> list:
    """Every client sends its next question at once; returns the sessions in the order they were sent."""
    texts = [f"{tag} session {i} turn {turn}: what is {i} plus {turn}?" for i in range(len(url_clients))]
    threads = [
        threading.Thread(target=c.predict, args=({"text": t, "files": []},), kwargs={"api_name": "/send"})
        for c, t in zip(url_clients, texts)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # a definite arrival order
    for thread in threads:
        thread.join(60)
    deadline = time.monotonic() + 300
    sessions = [None] * len(texts)
    while time.monotonic() < deadline:
        sessions = [session_of(app, t) for t in texts]
        if all(s is not None and s.answer is not None and s.answer.finished for s in sessions):
            # The worker done too (an answer's last speech can be held past its end), so the next round's
            # questions are admitted in the order they arrive, not behind a job still running.
            assert app.worker.idle(60)
            return sessions
        time.sleep(0.1)
    raise AssertionError(f"not all answered: {[s and s.answer and s.answer.finished for s in sessions]}")


def settle(app, expected_sessions: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(app.sessions) != expected_sessions and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(app.sessions) == expected_sessions
    assert app.worker.idle(timeout)


def run_round(app, url: str, tag: str) -> list[list]:
    """SESSIONS tabs, TURNS typed turns each, then every tab closed. Returns each turn's sessions."""
    tabs = clients(url, SESSIONS)
    rounds = []
    try:
        for turn in range(TURNS):
            rounds.append(ask_all(app, tabs, turn, tag))
    finally:
        for client in tabs:
            client.close()
    return rounds


def test_concurrent_sessions_get_their_own_answers_in_order(load_app):
    from model.session import AnswerTurn, OmniSession, UserTurn
    from omni_demo.live import LiveSession

    app, url = load_app
    settle(app, 0)
    # The first turns of a process allocate once what every later turn reuses (oneDNN and TorchScript
    # caches, codecs, Gradio's routes): one warm-up tab first, then the baseline.
    warm_up = clients(url, 1)[0]
    ask_all(app, [warm_up], 0, "warm-up")
    warm_up.close()
    settle(app, 0)
    rss_before, threads_before = rss_mib(), threading.active_count()
    engines_before, tabs_before = alive(OmniSession), alive(LiveSession)
    temp_before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("omni-demo-session-*"))

    rounds = run_round(app, url, "load")
    sessions = rounds[-1]
    assert len({id(s) for s in sessions}) == SESSIONS  # each client is its own session
    assert all(turn == sessions for turn in rounds)  # and keeps it from turn to turn
    for i, session in enumerate(sessions):
        asked = [m["content"] for m in session.chat if m["role"] == "user"]
        assert asked == [f"load session {i} turn {t}: what is {i} plus {t}?" for t in range(TURNS)]
        history = session.model.history
        assert [type(r) for r in history] == [UserTurn, AnswerTurn] * TURNS
        assert all(r.tokens for r in history if isinstance(r, AnswerTurn))  # a complete answer each turn
        assert len(session.timings) == TURNS and not any(t.interrupted for t in session.timings)
        prompt = app.sessions.loaded.processor.tokenizer.decode(session.model._engine.thinker.ids)
        others = [f"session {j} " for j in range(SESSIONS) if j != i]
        assert not any(other in prompt for other in others)  # nothing of another session
    for turn in range(TURNS):
        # Served in the order the questions reached the server: each answer began (its first text, shown
        # from the model's own thread) after those asked before it. When they end depends on how long each
        # answer's speech is.
        timings = sorted((s.timings[turn] for s in sessions), key=lambda t: t.turn_end_wall)
        began = [t.turn_end_wall + t.first_text for t in timings]
        assert began == sorted(began)

    del rounds, sessions, session, history
    settle(app, 0)  # the heartbeats stopped: every session was closed
    assert alive(OmniSession) <= engines_before and alive(LiveSession) <= tabs_before  # no caches left behind
    assert threading.active_count() <= threads_before + 2
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("omni-demo-session-*")) <= temp_before
    grown = rss_mib() - rss_before
    print(f"\nload: {SESSIONS} sessions x {TURNS} turns, RSS {rss_before:.0f} -> {rss_mib():.0f} MiB")
    assert grown < RSS_TOLERANCE_MIB


def test_soak_memory_stays_flat(soak_app):
    app, url = soak_app
    settle(app, 0)
    samples = []
    for index in range(SOAK_ROUNDS):
        run_round(app, url, f"soak{index}")
        settle(app, 0)
        samples.append(rss_mib())
    turns = SOAK_ROUNDS * SESSIONS * TURNS
    print(f"\nsoak: {turns} turns in {SOAK_ROUNDS} rounds, RSS per round (MiB): {[round(s) for s in samples]}")
    # After the first rounds warm the allocator, memory stays where it is.
    warm = samples[len(samples) // 3]
    assert max(samples[len(samples) // 3 :]) - warm < RSS_TOLERANCE_MIB
