"""The model worker: one thread, each session's jobs in order, sessions served fairly."""

from __future__ import annotations

import threading

import pytest

from omni_demo.worker import ModelWorker


@pytest.fixture
def worker():
    w = ModelWorker(max_active=2)
    yield w
    w.stop()


def job(log: list, name: str, steps: int, gate: threading.Event | None = None):
    for i in range(steps):
        if gate is not None:
            gate.wait(5)
        log.append((name, i))
        yield


def test_a_sessions_jobs_run_in_order_and_two_sessions_alternate(worker):
    log: list = []
    gate = threading.Event()
    worker.submit("a", job(log, "a1", 3, gate))
    worker.submit("a", job(log, "a2", 1, gate))
    worker.submit("b", job(log, "b1", 3, gate))
    gate.set()
    assert worker.idle(10)
    assert [x for x in log if x[0].startswith("a")] == [("a1", 0), ("a1", 1), ("a1", 2), ("a2", 0)]
    # Step by step, a and b take turns: b's first step does not wait for all of a.
    assert log.index(("b1", 0)) < log.index(("a1", 2))


def test_sessions_beyond_max_active_wait_in_order_and_know_their_place(worker):
    gate, log = threading.Event(), []
    for name in "abcd":
        worker.submit(name, job(log, name, 2, gate))
    assert worker.place("a") == 0 and worker.place("b") == 0
    assert worker.place("c") == 1 and worker.place("d") == 2
    assert worker.place("nobody") is None
    gate.set()
    assert worker.idle(10)
    first_step = {name: log.index((name, 0)) for name in "abcd"}
    assert first_step["c"] < first_step["d"]  # served in arrival order
    assert max(first_step["a"], first_step["b"]) < first_step["c"]


def test_a_failing_job_reports_and_the_others_go_on(worker):
    errors, log = [], []

    def broken():
        yield
        raise RuntimeError("boom")

    worker.submit("a", broken(), errors.append)
    worker.submit("b", job(log, "b", 3))
    assert worker.idle(10)
    assert [str(e) for e in errors] == ["boom"] and len(log) == 3


def test_cancel_closes_the_running_job_and_drops_the_queue(worker):
    gate, started, closed, log = threading.Event(), threading.Event(), [], []

    def long_job():
        try:
            while True:
                started.set()
                gate.wait(5)
                yield
        finally:
            closed.append(True)  # runs on the worker thread: the engine's clean-up happens there

    worker.submit("a", long_job())
    worker.submit("a", job(log, "never", 1))
    assert started.wait(5)
    worker.cancel("a")
    gate.set()
    assert worker.idle(10)
    assert closed == [True] and log == []


def test_jobs_cancelled_never_run_even_when_more_is_submitted_at_once(worker):
    """A tab's turn is cancelled and its next turn submitted straight after: the cancelled turn's queued
    jobs must not run (they did, when a submit cleared the cancel before the worker saw it)."""
    gate, started, log = threading.Event(), threading.Event(), []

    def running():
        started.set()
        gate.wait(5)
        log.append("running step")
        yield
        log.append("running went on")  # closed at its next step instead
        yield

    worker.submit("a", running())
    worker.submit("a", job(log, "cancelled", 2))
    assert started.wait(5)
    worker.cancel("a")
    worker.submit("a", job(log, "next turn", 1))
    gate.set()
    assert worker.idle(10)
    assert log == ["running step", ("next turn", 0)]
