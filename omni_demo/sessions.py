"""Every open browser tab's `LiveSession`, keyed by Gradio's session hash, and freed when the tab closes.

A page's session is freed when its heartbeat ends (Gradio's unload). A session that no page opened (a script
calling the page's events over HTTP has no heartbeat, so no unload) would never be: those expire after
`idle_seconds` without an event, and at most `max_pageless` exist at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from omni_demo.cache_budget import CacheBudget
from omni_demo.live import ChatSettings, LiveSession
from omni_demo.playout import SpeechPace
from omni_demo.replicas import Replicas
from omni_demo.turns import load_vad
from omni_demo.worker import ModelWorker

CLOSED_REMEMBERED = 10_000  # recently closed tabs' keys, so an event of theirs that comes late opens nothing
# A conversation with no page: closed after this long without an event (and with nothing in flight).
PAGELESS_IDLE_SECONDS = 300.0
MAX_PAGELESS = 16  # such conversations at once; each holds a VAD, a folder and, once it speaks, caches
MAX_TABS = 64  # conversations at once; past the cache budget, idle ones rebuild their caches when they speak


class SessionClosed(Exception):
    """An event from a tab whose session was closed (the page went away or lost the server)."""


class SessionRefused(Exception):
    """A new session past `max_tabs` or `max_pageless`; the message is for the caller."""


def full_message(open_tabs: int) -> str:
    talking = "1 person is" if open_tabs == 1 else f"{open_tabs} people are"
    return f"The demo is full: {talking} talking. Try again in a minute."


class Sessions:
    def __init__(self, loaded, worker: ModelWorker, zero_gpu: bool = False, defaults: ChatSettings | None = None,
                 on_count: Callable[[int], None] = lambda count: None, idle_seconds: float = PAGELESS_IDLE_SECONDS,
                 max_pageless: int = MAX_PAGELESS, max_tabs: int = MAX_TABS, budget: CacheBudget | None = None,
                 replicas: Replicas | None = None):
        """`on_count` hears how many tabs are open whenever one opens or closes. `budget`: the caches' memory,
        shared by every tab. `replicas`: the model's replicas on Ray, if it is not in this process."""
        self.on_count = on_count
        self.loaded = loaded
        self.worker = worker
        self.zero_gpu = zero_gpu
        self.defaults = defaults or ChatSettings.for_model(loaded)
        self.pace = SpeechPace()  # how fast this server makes speech: every tab's player plans with it
        self.idle_seconds = idle_seconds
        self.max_pageless = max_pageless
        self.max_tabs = max_tabs
        self.budget = budget
        self.replicas = replicas
        self._sessions: dict[str, LiveSession] = {}
        self._last_event: dict[str, float] = {}  # time.monotonic() of each session's last event
        self._pages: set[str] = set()  # keys whose page loaded: they end with its heartbeat, not by expiry
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._expiry = threading.Thread(target=self._expire_idle, name="session-expiry", daemon=True)
        self._expiry.start()

    def get(self, key: str) -> LiveSession:
        with self._lock:
            if key in self._closed:
                raise SessionClosed(key)
            self._last_event[key] = time.monotonic()
            session = self._sessions.get(key)
            if session is None:
                if len(self._sessions) >= self.max_tabs:
                    del self._last_event[key]
                    raise SessionRefused(full_message(len(self._sessions)))
                if key not in self._pages and len(self._pageless()) >= self.max_pageless:
                    del self._last_event[key]
                    raise SessionRefused(f"{self.max_pageless} conversations without a page are open; this server "
                                         "takes no more. Open the page in a browser, or try again later.")
                # Each tab has its own VAD: Silero keeps the state of the stream it listens to.
                session = self._sessions[key] = LiveSession(
                    key, self.loaded, self.worker, load_vad(), self.zero_gpu, settings=self.defaults, pace=self.pace,
                    budget=self.budget, replicas=self.replicas,
                )
                self.on_count(len(self._sessions))
            return session

    def page_loaded(self, key: str) -> str | None:
        """A browser page opened with this key: its session lives until the page's heartbeat ends. Returns
        what the page must say if the demo is full (its tab has no conversation)."""
        with self._lock:
            if key in self._closed:
                return None
            self._pages.add(key)
            if key not in self._sessions and len(self._sessions) >= self.max_tabs:
                return full_message(len(self._sessions))
            return None

    def expire(self, now: float | None = None) -> list[str]:
        """Closes the sessions no page holds that have been idle for `idle_seconds`; returns their keys."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [key for key in self._pageless()
                    if now - self._last_event[key] > self.idle_seconds and not self._sessions[key].busy]
        for key in idle:
            self.close(key)
        return idle

    def _pageless(self) -> list[str]:
        return [key for key in self._sessions if key not in self._pages]

    def _expire_idle(self) -> None:
        while not self._stopped.wait(min(30.0, self.idle_seconds / 4)):
            self.expire()

    def close(self, key: str) -> None:
        """Frees the tab's session. It counts as open until it is freed, and its key stays closed."""
        with self._lock:
            if key in self._closed:
                return
            self._closed[key] = None
            if len(self._closed) > CLOSED_REMEMBERED:
                self._closed.popitem(last=False)
            self._pages.discard(key)
            self._last_event.pop(key, None)
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
        self._stopped.set()
        for key in list(self._sessions):
            self.close(key)
