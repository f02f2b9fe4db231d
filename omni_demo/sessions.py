"""Every open browser tab's `LiveSession`, keyed by Gradio's session hash, and freed when the tab closes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from omni_demo.live import ChatSettings, LiveSession
from omni_demo.playout import SpeechPace
from omni_demo.turns import load_vad
from omni_demo.worker import ModelWorker

CLOSED_REMEMBERED = 10_000  # recently closed tabs' keys, so an event of theirs that comes late opens nothing


class SessionClosed(Exception):
    """An event from a tab whose session was closed (the page went away or lost the server)."""


class Sessions:
    def __init__(self, loaded, worker: ModelWorker, zero_gpu: bool = False, defaults: ChatSettings | None = None,
                 on_count: Callable[[int], None] = lambda count: None):
        """`on_count` hears how many tabs are open whenever one opens or closes."""
        self.on_count = on_count
        self.loaded = loaded
        self.worker = worker
        self.zero_gpu = zero_gpu
        self.defaults = defaults or ChatSettings.for_model(loaded)
        self.pace = SpeechPace()  # how fast this server makes speech: every tab's player plans with it
        self._sessions: dict[str, LiveSession] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> LiveSession:
        with self._lock:
            if key in self._closed:
                raise SessionClosed(key)
            session = self._sessions.get(key)
            if session is None:
                # Each tab has its own VAD: Silero keeps the state of the stream it listens to.
                session = self._sessions[key] = LiveSession(
                    key, self.loaded, self.worker, load_vad(), self.zero_gpu, settings=self.defaults, pace=self.pace
                )
                self.on_count(len(self._sessions))
            return session

    def close(self, key: str) -> None:
        """Frees the tab's session. It counts as open until it is freed, and its key stays closed."""
        with self._lock:
            if key in self._closed:
                return
            self._closed[key] = None
            if len(self._closed) > CLOSED_REMEMBERED:
                self._closed.popitem(last=False)
            session = self._sessions.get(key)
        if session is None:
            return
        session.close()  # outside the lock: other tabs open and close meanwhile
        with self._lock:
            del self._sessions[key]
            self.on_count(len(self._sessions))

    def open(self) -> list[LiveSession]:
        with self._lock:
            return list(self._sessions.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close_all(self) -> None:
        for key in list(self._sessions):
            self.close(key)
