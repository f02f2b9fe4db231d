"""One model replica, run as a Ray actor (omni_demo/replicas.py starts them): the model loaded once, the
model worker that batches its conversations' steps (omni_demo/worker.py), and each conversation's engine.

The page process holds no model. Its tabs' engine calls (omni_demo/remote_session.py) come here in the
order each tab made them: a call carries the tab's sequence number and waits for the ones before it, since
Ray runs a threaded actor's calls in any order. Each call is a job on this replica's worker, so the engine
is only ever touched from that thread, as in one process. A call returns the change to the conversation's
history (`HistorySync`) so that the page always holds it: a tab whose replica is lost is rebuilt from it on
another. Answers stream back event by event (a Ray generator), the history's change last.

This module does not import Ray: the actor is this class wrapped by `ray.remote` in the page process.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from model.engine.batched_step import Step
from model.engine.events import AnswerSettings, SpeechPending
from model.engine.history import Record
from model.loading import load_omni
from model.session import OmniSession
from model.warm_up import warm_up
from omni_demo.cache_budget import CacheBudget
from omni_demo.worker import ModelWorker


class StaleBinding(RuntimeError):
    """A call for a conversation that this replica does not hold: it was restarted since the tab was bound."""


@dataclass
class HistorySync:
    """The conversation's history after a call: the page keeps its first `keep` records and adds `tail`."""

    keep: int
    tail: list[Record]

    def apply(self, records: list[Record]) -> list[Record]:
        return records[: self.keep] + self.tail


@dataclass(eq=False)
class _Tab:
    """A conversation held here; a holder of the replica's cache budget (omni_demo/cache_budget.py), which
    only the worker's jobs touch."""

    session: OmniSession | None = None
    interrupt: threading.Event = field(default_factory=threading.Event)
    next_seq: int = 0  # the sequence number of the call to run next
    synced: list[Record] = field(default_factory=list)  # the history as the page holds it
    jobs: int = 0  # its calls submitted and not yet finished
    system_prompt: str | None = None
    max_positions: int | None = None
    given_back: list[Record] | None = None  # its history, while its caches are given back

    @property
    def idle(self) -> bool:
        """Holds caches, and no call of it is waiting or running, nor a turn being heard."""
        return self.session is not None and self.jobs == 0 and not self.session.hearing

    def cache_bytes(self) -> int:
        return self.session.cache_bytes() if self.session is not None else 0

    def give_back(self) -> None:
        self.given_back, self.session = self.session.history, None


_END = object()  # an answer's stream is over


class Replica:
    def __init__(self, source: str, device: str | None = None, index: int = 0, max_active: int | None = None,
                 cache_gib: float | None = None):
        """`cache_gib`: the caches' budget (default: a share of what is free once the model is loaded); idle
        conversations give theirs back past it and are rebuilt from their history at their next call."""
        self.loaded = load_omni(source, device=device)
        self.budget = CacheBudget.for_model(self.loaded, cache_gib)
        warm_up(self.loaded)
        self.worker = ModelWorker(max_active=max_active or self.budget.answers_at_once(self.loaded))
        self.budget.counts_also(self.worker.batch_cache_bytes)
        self.index = index
        self.incarnation = uuid.uuid4().hex  # a restarted replica holds none of the conversations it had
        self._tabs: dict[str, _Tab] = {}
        self._closed: set[str] = set()  # tabs gone: a late call of theirs is refused, not waited for
        self._order = threading.Condition()

    def info(self) -> dict:
        """Who this replica is, for the operator's log and the page's placement."""
        return {"index": self.index, "pid": os.getpid(), "host": socket.gethostname(), "incarnation": self.incarnation,
                "device": str(self.loaded.device), "model": self.loaded.describe(), "source": self.loaded.source,
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "cache_share": self.budget.held() / self.budget.budget_bytes if self.budget.budget_bytes else 0.0,
                "tabs": len(self._tabs)}

    # ------------------------------------------------------------------ the page's calls

    def call(self, incarnation: str, tab: str, seq: int, name: str, *args) -> HistorySync:
        """One engine call of a tab (`name`: a method of `_Calls`), after the tab's earlier ones."""
        done: Future = Future()

        def job() -> Iterator[None]:
            hosted = self._tabs[tab]
            try:
                if name != "start":
                    yield from self._ready(hosted)
                yield from getattr(_Calls, name)(self, hosted, *args)
                done.set_result(self._sync(hosted))
            except BaseException as error:  # noqa: BLE001 - it belongs to the caller
                done.set_exception(error)
            finally:
                self._finished(hosted)

        self._submit(incarnation, tab, seq, job())
        return done.result()

    def answer(self, incarnation: str, tab: str, seq: int, settings: AnswerSettings) -> Iterator:
        """The answer to the turn just closed: its events as they are made, then the history's change."""
        events: queue.Queue = queue.Queue()

        def job() -> Iterator:
            hosted = self._tabs[tab]
            try:
                yield from self._ready(hosted)
                stream = hosted.session.respond(settings, batched=True)
                try:
                    for event in stream:
                        if isinstance(event, Step):  # run with the other answers' steps of this round
                            yield event
                            continue
                        events.put(event)
                        if isinstance(event, SpeechPending):
                            yield
                finally:
                    stream.close()
                events.put(self._sync(hosted))
            except BaseException as error:  # noqa: BLE001 - it belongs to the caller
                events.put(error)
            finally:
                self._finished(hosted)
            events.put(_END)

        self._submit(incarnation, tab, seq, job())
        while (item := events.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def interrupt(self, incarnation: str, tab: str) -> None:
        """Stops the tab's answer at its next step (out of order: at once)."""
        hosted = self._tabs.get(tab)
        if hosted is not None and incarnation == self.incarnation:
            hosted.interrupt.set()

    def close(self, tab: str) -> None:
        """The tab is gone: its answer stops, and its caches are freed once its calls have run (each caller
        waits for its own)."""
        with self._order:
            self._closed.add(tab)
            hosted = self._tabs.get(tab)
            self._order.notify_all()
        if hosted is not None:
            hosted.interrupt.set()
        self.worker.submit(tab, _forget(self._tabs, tab))

    # ------------------------------------------------------------------ order

    def _submit(self, incarnation: str, tab: str, seq: int, job: Iterator) -> None:
        if incarnation != self.incarnation:
            raise StaleBinding(f"replica {self.index} was restarted")
        with self._order:
            hosted = self._tabs.setdefault(tab, _Tab())
            if not self._order.wait_for(lambda: hosted.next_seq >= seq or tab in self._closed, timeout=60):
                raise RuntimeError(f"call {seq} of tab {tab[:8]} never came after call {hosted.next_seq}")
            if tab in self._closed:
                raise StaleBinding(f"tab {tab[:8]} was closed on replica {self.index}")
            if hosted.next_seq != seq:
                raise RuntimeError(f"call {seq} of tab {tab[:8]} came twice")
            self.worker.submit(tab, job)  # the worker runs a tab's jobs in the order they are submitted
            hosted.next_seq += 1
            hosted.jobs += 1
            self._order.notify_all()

    def _finished(self, hosted: _Tab) -> None:
        with self._order:
            hosted.jobs -= 1

    def _ready(self, hosted: _Tab) -> Iterator[None]:
        """The conversation's caches, rebuilt from its history if they were given back (a turn a step); the
        others' idle ones are given back first as far as the budget needs."""
        self.budget.use(hosted)
        if hosted.session is None and hosted.given_back is not None:
            session = OmniSession(self.loaded, system_prompt=hosted.system_prompt, interrupt=hosted.interrupt,
                                  max_positions=hosted.max_positions)
            yield from session.restoring(hosted.given_back)
            hosted.session, hosted.given_back = session, None
            hosted.synced = list(session.history)  # the page's own records, made again: nothing comes back

    @staticmethod
    def _sync(hosted: _Tab) -> HistorySync:
        """What changed in the history since the page last heard (records are replaced, never changed)."""
        history, synced = hosted.session.history, hosted.synced
        keep = 0
        while keep < min(len(history), len(synced)) and history[keep] is synced[keep]:
            keep += 1
        hosted.synced = list(history)
        return HistorySync(keep, history[keep:])


def _forget(tabs: dict, tab: str) -> Iterator[None]:
    tabs.pop(tab, None)
    yield


class _Calls:
    """The engine calls a tab makes, each a job on the replica's worker (`Replica.call`)."""

    @staticmethod
    def start(replica: Replica, hosted: _Tab, system_prompt: str, max_positions: int | None,
              history: list[Record]) -> Iterator[None]:
        """A fresh engine, rebuilt from the page's history (a turn a step), as caches given back are."""
        hosted.system_prompt, hosted.max_positions = system_prompt, max_positions
        hosted.session, hosted.given_back = None, list(history)
        yield from replica._ready(hosted)

    @staticmethod
    def restore(replica: Replica, hosted: _Tab, system_prompt: str, history: list[Record]) -> Iterator[None]:
        hosted.system_prompt = hosted.session.system_prompt = system_prompt
        hosted.session.restore(history)
        hosted.synced = list(hosted.session.history)  # the page's own: nothing comes back
        yield

    @staticmethod
    def feed(replica: Replica, hosted: _Tab, audio, frames) -> Iterator[None]:
        hosted.session.feed(audio, frames)
        yield

    @staticmethod
    def end_user_turn(replica: Replica, hosted: _Tab) -> Iterator[None]:
        hosted.session.end_user_turn()
        yield

    @staticmethod
    def add_user_turn(replica: Replica, hosted: _Tab, parts, media) -> Iterator[None]:
        yield from hosted.session.adding_user_turn(*parts, media=media)

    @staticmethod
    def continue_user_turn(replica: Replica, hosted: _Tab) -> Iterator[None]:
        hosted.session.continue_user_turn()
        yield

    @staticmethod
    def keep_answer(replica: Replica, hosted: _Tab, count: int) -> Iterator[None]:
        hosted.session.keep_answer(count)
        yield
