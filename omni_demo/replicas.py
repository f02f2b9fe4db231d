"""Model replicas on Ray, seen from the page process: starting them, watching them, placing tabs on them.

`python app.py --replicas N` starts a local Ray instance with N replicas (omni_demo/replica.py: each loads
the model once and runs the engine with its scheduler); `--ray-address ADDR` joins a running cluster and
places them on its GPUs. The page process keeps the handlers, listeners, views and each conversation's
history, and no model. A tab is bound to the least loaded live replica at its first turn and stays there
while that replica lives; a replica that dies is noticed by the calls in flight at once and by a ping
within seconds, and its tabs are rebuilt on another from their history (omni_demo/remote_session.py).
Ray restarts a dead replica (`max_restarts`); once it answers again it takes new tabs.

Ray is imported only here and only when replicas are asked for: one process needs none of it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PING_SECONDS = 1.0  # how often each replica is asked whether it lives
PING_TIMEOUT_SECONDS = 5.0  # a replica that does not answer in this long is taken for lost
READY_TIMEOUT_SECONDS = 600.0  # loading a large checkpoint onto a GPU takes minutes
CALLS_AT_ONCE = 256  # a replica's calls in flight: each open tab's answer stream and its queued engine calls
LOST_MESSAGE = "The model's server was restarted; your conversation is kept. Ask again."


class ReplicaLost(RuntimeError):
    """The replica a tab was bound to died or was restarted: the tab moves to another."""

    def __init__(self, message: str = LOST_MESSAGE):
        super().__init__(message)


@dataclass
class _Replica:
    index: int
    handle: object  # the Ray actor handle
    incarnation: str | None = None  # None while down
    info: dict = field(default_factory=dict)
    tabs: set[str] = field(default_factory=set)


@dataclass
class Binding:
    """A tab's place on one replica, for as long as that incarnation of it lives. Only the tab's model jobs
    (the page's worker thread) use it, so its sequence numbers are made in the order the calls are made."""

    replica: _Replica
    incarnation: str
    tab: str
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    @property
    def lost(self) -> bool:
        return self.replica.incarnation != self.incarnation

    @property
    def index(self) -> int:
        return self.replica.index


class Replicas:
    def __init__(self, handles: list, ray_module):
        self.ray = ray_module
        self._replicas = [_Replica(index, handle) for index, handle in enumerate(handles)]
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        for replica, info in zip(self._replicas, ray_module.get([r.handle.info.remote() for r in self._replicas],
                                                               timeout=READY_TIMEOUT_SECONDS)):
            self._up(replica, info)
        self._monitor = threading.Thread(target=self._watch, name="replica-monitor", daemon=True)
        self._monitor.start()

    @classmethod
    def start(cls, source: str, count: int | None = None, address: str | None = None, device: str | None = None,
              max_active: int | None = None, cache_gib: float | None = None, ray_init: dict | None = None) -> Replicas:
        """Starts Ray (or joins the cluster at `address`) and `count` replicas of `source`: by default one per
        GPU in the cluster; with none, CPU replicas (`count`, default 1) sharing the machine's cores.
        `max_active` and `cache_gib` are each replica's (omni_demo/cache_budget.py)."""
        import ray

        from omni_demo.replica import Replica

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, **(ray_init or {}))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = count or gpus or 1
        on_gpu = gpus > 0 and device != "cpu"
        # A CPU replica asks for its share of the cores, and Ray gives its process that many threads
        # (OMP_NUM_THREADS), so replicas sharing a machine do not oversubscribe it.
        cores = max(1, int(ray.cluster_resources().get("CPU", 1)) // count)
        actor = ray.remote(Replica).options(
            max_restarts=-1,  # Ray brings a dead replica back; its tabs have moved by then
            max_task_retries=0,  # a call in flight fails with it: the page rebuilds the tab elsewhere
            max_concurrency=CALLS_AT_ONCE,
            num_gpus=1 if on_gpu else 0,
            num_cpus=1 if on_gpu else cores,
        )
        handles = [actor.remote(source, "cuda" if on_gpu else "cpu", index, max_active, cache_gib)
                   for index in range(count)]
        return cls(handles, ray)

    # ------------------------------------------------------------------ placement

    def bind(self, tab: str) -> Binding:
        """The tab's replica: the live one with the fewest tabs, then the least of its cache budget held (as
        its last ping said)."""
        with self._lock:
            live = [r for r in self._replicas if r.incarnation is not None]
            if not live:
                raise ReplicaLost("No model server is running right now; your conversation is kept. Try again "
                                  "in a minute.")
            replica = min(live, key=lambda r: (len(r.tabs), r.info.get("cache_share", 0.0), r.index))
            replica.tabs.add(tab)
            return Binding(replica, replica.incarnation, tab)

    def unbind(self, binding: Binding) -> None:
        with self._lock:
            binding.replica.tabs.discard(binding.tab)

    def lost(self, binding: Binding, error: BaseException) -> None:
        """A call of the tab failed for its replica's sake: that incarnation is down for every tab on it."""
        with self._lock:
            replica = binding.replica
            if replica.incarnation == binding.incarnation:
                self._down(replica, error)

    def live(self) -> list[int]:
        with self._lock:
            return [r.index for r in self._replicas if r.incarnation is not None]

    def source(self) -> str:
        """The checkpoint the replicas loaded (`--model auto` resolved on their devices)."""
        with self._lock:
            return next(r.info["source"] for r in self._replicas if r.info)

    def infos(self) -> list[dict]:
        with self._lock:
            return [dict(r.info) for r in self._replicas]

    def tabs(self) -> dict[int, set[str]]:
        with self._lock:
            return {r.index: set(r.tabs) for r in self._replicas}

    def stop(self) -> None:
        self._stopped.set()
        self._monitor.join(timeout=PING_TIMEOUT_SECONDS + PING_SECONDS)
        for replica in self._replicas:
            self.ray.kill(replica.handle, no_restart=True)

    # ------------------------------------------------------------------ health

    def _watch(self) -> None:
        while not self._stopped.wait(PING_SECONDS):
            pings = {r.index: r.handle.info.remote() for r in self._replicas}
            ready, _ = self.ray.wait(list(pings.values()), num_returns=len(pings), timeout=PING_TIMEOUT_SECONDS)
            for replica in self._replicas:
                ref = pings[replica.index]
                if ref not in ready:
                    if replica.incarnation is not None:
                        with self._lock:
                            self._down(replica, TimeoutError(f"no answer in {PING_TIMEOUT_SECONDS:.0f} s"))
                    continue
                try:
                    info = self.ray.get(ref)
                except Exception as error:  # noqa: BLE001 - any failure of the ping: the replica is down
                    with self._lock:
                        if replica.incarnation is not None:
                            self._down(replica, error)
                    continue
                if info["incarnation"] != replica.incarnation:
                    self._up(replica, info)
                else:
                    with self._lock:
                        replica.info = info

    def _up(self, replica: _Replica, info: dict) -> None:
        with self._lock:
            restored = bool(replica.info)
            replica.incarnation, replica.info, replica.tabs = info["incarnation"], info, set()
        log.info("replica %d %s: pid %d on %s, device %s, model %s", replica.index,
                 "restored" if restored else "ready", info["pid"], info["host"], info["device"], info["model"])

    def _down(self, replica: _Replica, error: BaseException) -> None:
        """Under the lock."""
        moved = len(replica.tabs)
        replica.incarnation, replica.tabs = None, set()
        log.warning("replica %d lost (%s): its %d tab(s) move to the others", replica.index,
                    type(error).__name__, moved)
