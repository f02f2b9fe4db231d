"""The one thread that runs the model: every session's model work, in a fair order.

A job is a generator: the worker advances it one step (to its next `yield`: a prefilled window, a text
delta, an audio chunk) and then moves to the next session, so a short job (one 2 s window's prefill) never
waits for another session's whole answer. The work goes in rounds: each round advances every active
session's job one step, and the steps that answers hand out in a round (model/engine/batched_step.py: each
one-token decode forward, each speech window to solve) run together at its end, one batch per kind (one
forward per decoder, one DiT pass per window length), so up to `max_active` answers share each of the
model's passes. Further sessions wait in arrival order and can be told their place. Each session's own jobs
run one after another, in the order they were submitted.

Gradio's handlers only submit jobs and return; nothing else touches the model, so no handler ever waits
for it and the microphone stream never drops audio.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from model.engine.batch_cache import BatchCaches
from model.engine.batched_step import Step, run_steps

log = logging.getLogger(__name__)


@dataclass
class Job:
    steps: Iterator  # a generator run on the worker thread
    on_error: Callable[[BaseException], None] | None = None
    cancelled: bool = False  # closed at its next step, on the worker thread


class ModelWorker:
    def __init__(self, max_active: int = 8, batch: bool = True, thread: bool = True):
        """`batch`: a round's steps run together, each kind in one batch; otherwise one after another (the
        step-interleaved scheduler, for comparison). `thread=False`: no thread of its own; the caller runs
        the rounds (`run_round`), so a test chooses exactly when each job arrives."""
        if max_active < 1:
            raise ValueError("max_active must be at least 1")
        self.max_active = max_active
        self.batch = batch
        self._batch_caches = BatchCaches()  # this thread's (the model thread's) batch caches between rounds
        self._jobs: dict[Hashable, deque[Job]] = {}
        self._active: deque[Hashable] = deque()  # sessions sharing the model, in round-robin order
        self._waiting: deque[Hashable] = deque()  # sessions with work, not yet admitted
        self._lock = threading.Condition()
        self._stopped = False
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
            self._thread.start()

    def batch_cache_bytes(self) -> int:
        """The memory of the batch caches kept between rounds (the cache budget counts it)."""
        return self._batch_caches.nbytes()

    def submit(self, key: Hashable, steps: Iterator, on_error: Callable[[BaseException], None] | None = None) -> None:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the model worker has stopped")
            if key not in self._jobs:
                self._jobs[key] = deque()
                self._waiting.append(key)
            self._jobs[key].append(Job(steps, on_error))
            self._lock.notify_all()

    def place(self, key: Hashable) -> int | None:
        """0 while the session's work runs, n when n-1 sessions wait before it, None with nothing queued."""
        with self._lock:
            if key in self._active:
                return 0
            if key in self._waiting:
                free = self.max_active - len(self._active)
                return max(0, self._waiting.index(key) + 1 - free)
            return None

    def cancel(self, key: Hashable) -> None:
        """Drops the session's jobs: the queued ones now (they never run, whatever is submitted after), the
        current one at its next step, on the worker thread, so its clean-up runs there (a closed tab)."""
        with self._lock:
            jobs = self._jobs.get(key)
            if jobs:
                jobs[0].cancelled = True
                while len(jobs) > 1:
                    jobs.pop().steps.close()  # never started: closing runs none of its code
                self._lock.notify_all()

    def idle(self, timeout: float | None = None) -> bool:
        """Waits until no session has work (tests, shutdown)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._jobs, timeout)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for key in list(self._jobs):
                self.cancel(key)
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        else:
            while self.run_round():
                pass

    def run_round(self) -> bool:
        """One round on the caller's thread (a worker made with `thread=False`); False when no work was left."""
        picked = self._round(block=False)
        if not picked:
            return False
        self._advance_all(picked)
        return True

    def _round(self, block: bool = True) -> list[tuple[Hashable, Job]] | None:
        """The current job of every active session, in round-robin order; None when stopped and drained (or,
        not `block`ing, when no session has work)."""
        with self._lock:
            while True:
                while self._waiting and len(self._active) < self.max_active:
                    self._active.append(self._waiting.popleft())
                if self._active:
                    picked = [(key, self._jobs[key][0]) for key in self._active]
                    self._active.rotate(-1)  # who goes first changes from round to round
                    return picked
                if self._stopped or not block:
                    return None
                self._lock.wait()

    def _finish(self, key: Hashable) -> None:
        """The session's current job is done (only `_advance` removes a session's first job)."""
        with self._lock:
            jobs = self._jobs.get(key)
            if jobs:
                jobs.popleft()
            if not jobs:
                self._jobs.pop(key, None)
                if key in self._active:
                    self._active.remove(key)
                if key in self._waiting:
                    self._waiting.remove(key)
            self._lock.notify_all()

    def _run(self) -> None:
        while (picked := self._round()) is not None:
            self._advance_all(picked)

    def _advance_all(self, picked: list[tuple[Hashable, Job]]) -> None:
        """One round: each picked job one step, then the steps they handed out, together."""
        asked: list[tuple[Hashable, Job, Step]] = []
        finished = []
        for key, job in picked:
            done, step = self._advance(job, lambda: next(job.steps))
            if step is not None:
                asked.append((key, job, step))
            elif done:
                finished.append(key)
        picked.clear()  # the caller's list too: no job is held past this round
        del job
        if asked:
            finished += self._decode(asked)
        # Drop the jobs (their error handlers hold the sessions) before anyone can see them finished:
        # `idle` then means that no session's memory is held here either.
        del asked
        for key in finished:
            self._finish(key)
        with self._lock:
            nobody = not self._active
        if nobody:
            self._batch_caches.clear()

    def _decode(self, asked: list[tuple[Hashable, Job, Step]]) -> list[Hashable]:
        """The round's steps, batched; a failure reaches every job that asked (each recovers its own).
        Returns the sessions whose job has finished."""
        try:
            run_steps([step for _, _, step in asked], batch=self.batch, caches=self._batch_caches)
            return []
        except BaseException as error:  # noqa: BLE001 - the failure belongs to the answers, not to the worker
            log.exception("a batched step failed")
            return [key for key, job, _ in asked if self._advance(job, lambda: job.steps.throw(error))[0]]

    def _advance(self, job: Job, resume: Callable[[], object]) -> tuple[bool, Step | None]:
        """One step of the job (`resume` it); whether it has finished (ended, failed or cancelled), and the
        step it handed out, if any (it runs before the job is touched again)."""
        with self._lock:
            cancelled = job.cancelled
        if cancelled:
            job.steps.close()  # runs the job's own clean-up (finally blocks) on this thread
            return True, None
        try:
            value = resume()
            return False, value if isinstance(value, Step) else None
        except StopIteration:
            return True, None
        except BaseException as error:  # noqa: BLE001 - one session's failure must not stop the others
            log.exception("model job failed")
            if job.on_error is not None:
                try:
                    job.on_error(error)
                except Exception:  # noqa: BLE001
                    log.exception("error handler failed")
            return True, None
