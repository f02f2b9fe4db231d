"""A tab's conversation when the model runs on Ray replicas (omni_demo/replicas.py): `ReplicaModel` is the
tab's `TabModel` with its engine on a replica, and `RemoteSession` the engine calls it makes, made there.

The jobs stay the page's (the page's worker runs them, as in one process) and so does the history: each
call's change to it comes back (`HistorySync`), so a tab whose replica is lost is rebuilt from it on
another. Calls that return nothing the job needs (feed a window, close the turn, keep what was heard) are
sent without waiting; the replica runs a tab's calls in the order they were made, and a failure comes out
of the tab's next call. An answer streams back event by event; while none has come, the job hands its
wait to the page's worker (`RemoteWait`), which waits for every tab's at once.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from model.engine.batched_step import Step
from model.engine.events import AnswerSettings
from model.engine.history import Record
from omni_demo.replica import HistorySync, StaleBinding
from omni_demo.replicas import Binding, ReplicaLost, Replicas
from omni_demo.tab_model import TabModel

log = logging.getLogger(__name__)

WAIT_SECONDS = 0.02  # the page's worker waits this long a round for the replicas' next results


@dataclass(eq=False)
class RemoteWait(Step):
    """A job waiting for a replica's next result (an ObjectRef or a Ray generator's next item)."""

    ray: object
    waitable: object
    result: object = None
    ran: bool = False

    def run(self) -> None:
        self.run_together([self])

    @classmethod
    def run_together(cls, steps: list[RemoteWait]) -> None:
        steps[0].ray.wait([step.waitable for step in steps], num_returns=1, timeout=WAIT_SECONDS)
        for step in steps:
            step.ran = True


class RemoteSession:
    """The `OmniSession` calls a `TabModel` makes, made on the tab's replica (see the module's docstring)."""

    def __init__(self, replicas: Replicas, tab: str, system_prompt: str, max_positions: int | None,
                 history: list[Record]):
        self.replicas = replicas
        self.ray = replicas.ray
        # A conversation of its own on the replica: after a Clear or a move the tab starts another.
        self.binding: Binding = replicas.bind(f"{tab}/{uuid.uuid4().hex[:8]}")
        self.system_prompt = system_prompt
        self._records = list(history)
        self._pending: list = []  # refs of the calls sent without waiting, oldest first
        self._failed: BaseException | None = None  # a failure of one of them, for the next call
        self._call("start", system_prompt, max_positions, list(history))

    @property
    def replica(self) -> int:
        return self.binding.index

    @property
    def lost(self) -> bool:
        return self.binding.lost

    @property
    def history(self) -> list[Record]:
        """The conversation as far as the replica has reported it (never raises: a failure waits for the next
        call)."""
        self._take_results(wait=True)
        return list(self._records)

    def cache_bytes(self) -> int:
        return 0  # held on the replica, which keeps its own budget

    # ------------------------------------------------------------------ calls

    def restoring(self, history: list[Record]) -> Iterator[None]:
        self.restore(history)
        yield

    def restore(self, history: list[Record]) -> None:
        self._records = list(history)
        self._call("restore", self.system_prompt, list(history))

    def feed(self, audio, frames=()) -> None:
        self._call("feed", audio, list(frames))

    def end_user_turn(self) -> None:
        self._call("end_user_turn")

    def adding_user_turn(self, *parts, media=None) -> Iterator[None]:
        self._call("add_user_turn", list(parts), media)
        yield

    def continue_user_turn(self) -> None:
        self._call("continue_user_turn")

    def keep_answer(self, count: int) -> None:
        self._call("keep_answer", count)

    def interrupt(self) -> None:
        """Stops the answer at its next step, at once (not after the tab's other calls)."""
        if not self.lost:
            self.binding.replica.handle.interrupt.remote(self.binding.incarnation, self.binding.tab)

    def close(self) -> None:
        """The tab is gone or moves: the replica frees its conversation."""
        self.replicas.unbind(self.binding)
        if not self.lost:
            self.binding.replica.handle.close.remote(self.binding.tab)

    def respond(self, settings: AnswerSettings, batched: bool = False) -> Iterator:
        """The answer's events as the replica makes them; `RemoteWait`s while none has come."""
        stream = self._send(lambda handle, *args: handle.answer.options(num_returns="streaming").remote(*args), settings)
        finished = False
        try:
            while True:
                self._settle()
                ready, _ = self.ray.wait([stream], timeout=0)
                if not ready:
                    wait = RemoteWait(self.ray, stream)
                    yield wait
                    if not wait.ran:  # a caller that runs no steps (an unbatched consumer)
                        wait.run()
                    continue
                try:
                    ref = next(stream)
                except StopIteration:
                    finished = True
                    return
                item = self._get(ref)
                if isinstance(item, HistorySync):  # the calls before the answer have all run: theirs first
                    self._settle(wait=True)
                    self._apply(item)
                else:
                    yield item
        finally:
            if not finished:  # closed early (a closed tab) or failed: the replica's answer stops too
                self.interrupt()

    # ------------------------------------------------------------------ helpers

    def _call(self, name: str, *args) -> None:
        self._settle()
        self._pending.append(self._send(lambda handle, *head: handle.call.remote(*head, name, *args)))

    def _send(self, remote, *args):
        if self.lost:
            raise ReplicaLost()
        binding = self.binding
        return remote(binding.replica.handle, binding.incarnation, binding.tab, binding.next_seq(), *args)

    def _take_results(self, wait: bool) -> None:
        """Takes in the results of the calls that have finished (`wait`: of all), in order; a failure is kept
        for `_settle` to raise."""
        while self._pending:
            ready, _ = self.ray.wait(self._pending[:1], timeout=None if wait else 0)
            if not ready:
                break
            ref = self._pending.pop(0)
            try:
                self._apply(self.ray.get(ref))
            except Exception as error:  # noqa: BLE001
                self._failed = self._failed or self._unwrap(error)

    def _settle(self, wait: bool = False) -> None:
        """`_take_results`, then raises the first failure of them (or the replica's loss)."""
        self._take_results(wait)
        if self._failed is not None:
            error, self._failed = self._failed, None
            raise error
        if self.lost:
            raise ReplicaLost()

    def _apply(self, sync: HistorySync) -> None:
        self._records = sync.apply(self._records)

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except Exception as error:  # noqa: BLE001
            raise self._unwrap(error) from None

    def _unwrap(self, error: BaseException) -> BaseException:
        """The engine's own error (a refused input keeps its message), or `ReplicaLost` when the replica is
        gone (and then it is marked down for every tab on it)."""
        from ray import exceptions

        cause = error.cause if isinstance(error, exceptions.RayTaskError) else error
        if isinstance(cause, (StaleBinding, exceptions.RayActorError)):  # died, restarting, or restarted
            self.replicas.lost(self.binding, cause)
            return ReplicaLost()
        return cause


class ReplicaModel(TabModel):
    """A tab's `TabModel` whose engine is on a replica: bound at its first turn, moved (rebuilt from its
    history on another replica) when that one is lost."""

    def __init__(self, *args, replicas: Replicas, **kwargs):
        super().__init__(*args, **kwargs)
        self.replicas = replicas
        self._lock = threading.Lock()  # `_engine` is replaced by the worker's jobs and read by `interrupt`

    @property
    def replica(self) -> int | None:
        """The replica the conversation is on (None: none yet)."""
        engine = self._engine
        return None if engine is None else engine.replica

    def _rebuilding(self) -> Iterator[None]:
        if self._engine is None:
            engine = RemoteSession(self.replicas, self.name, self.system_prompt, self.max_positions,
                                   self._given_back or [])
            with self._lock:
                self._engine, self._given_back = engine, None
        yield

    def interrupt(self) -> None:
        super().interrupt()
        with self._lock:
            engine = self._engine
        if engine is not None:
            engine.interrupt()

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def clear(self, files) -> Iterator[None]:
        self.close()  # the replica frees the old conversation; the next turn binds afresh
        yield from super().clear(files)

    @property
    def idle(self) -> bool:
        return False  # its caches are the replica's to manage

    def _rebuild(self, history: list[Record], error: BaseException) -> None:
        if isinstance(error, ReplicaLost) or (self._engine is not None and self._engine.lost):
            self.close()
            self._given_back = history  # the next job rebuilds it on a live replica
            log.warning("tab %s moves off its replica; %d records kept", self.name[:8], len(history))
            return
        super()._rebuild(history, error)

    @staticmethod
    def failure_message(error: BaseException) -> str:
        if isinstance(error, ReplicaLost):
            return str(error)
        return TabModel.failure_message(error)
