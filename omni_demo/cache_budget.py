"""The memory the conversations' caches may hold, and who gives theirs back when it is needed.

The budget is set at start: `--cache-gib`, or a share of the memory free once the model is loaded. Before a
conversation's model work, `use` gives back the caches of the conversations used least recently that are
idle (no turn being heard, no answer being made) until what is held fits. Such a conversation keeps its
history and rebuilds its caches from it on its next turn, through the calls that built them (the path a
ZeroGPU call and a failed turn take), so it answers exactly as if it had kept them. Moving them to host
memory instead would be quicker to bring back on a GPU, but holds host memory for every idle tab and is a
second way back to test; a rebuild is one prefill of the history (docs/performance.md).

Only the model worker's jobs call it, as they alone touch caches.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Callable

import psutil
import torch

log = logging.getLogger(__name__)

FREE_SHARE = 0.6  # of the memory free after loading: the rest is for activations, the vocoder, fragmentation
PLANNED_POSITIONS = 8192  # a conversation's positions, for how many can answer at once
MAX_ACTIVE = 16  # answers in one batched step at most, whatever the budget


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def bytes_per_position(loaded) -> int:
    """Keys and values of the thinker's and the talker's decoder layers for one position."""
    size = torch.finfo(loaded.dtype).bits // 8
    model = loaded.model
    decoders = [model.thinker.model.language_model] + ([model.talker.model] if hasattr(model, "talker") else [])
    return size * sum(2 * layer.self_attn.k_proj.out_features for decoder in decoders for layer in decoder.layers)


class CacheBudget:
    def __init__(self, budget_bytes: int | None):
        """`budget_bytes`: None holds everything (nothing is given back)."""
        self.budget_bytes = budget_bytes
        self._used: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # holder -> when it was last used
        self._clock = itertools.count()
        self.given_back = 0  # conversations whose caches were given back, so far
        self.peak = 0  # the most held after making room, in bytes
        # What the model thread holds besides the conversations' own caches: its batch caches (a GPU's answers
        # decode on one, model/engine/batch_cache.py); `counts_also` names where to read it.
        self._also: Callable[[], int] = lambda: 0

    def counts_also(self, held: Callable[[], int]) -> None:
        self._also = held

    @classmethod
    def for_model(cls, loaded, cache_gib: float | None = None) -> CacheBudget:
        if cache_gib is not None:
            budget = int(cache_gib * 2**30)
        else:
            budget = int(FREE_SHARE * free_bytes(loaded.device))
        return cls(budget)

    def answers_at_once(self, loaded) -> int:
        """How many conversations of `PLANNED_POSITIONS` the budget holds, within 1..MAX_ACTIVE."""
        if self.budget_bytes is None:
            return MAX_ACTIVE
        planned = PLANNED_POSITIONS * bytes_per_position(loaded)
        if loaded.device.type == "cuda":  # answers decode on static caches and, batched, on a copy in a batch cache
            planned *= 2
        return max(1, min(MAX_ACTIVE, self.budget_bytes // planned))

    def held(self) -> int:
        return sum(holder.cache_bytes() for holder in list(self._used)) + self._also()

    def use(self, holder) -> None:
        """`holder` (a TabModel) is about to use its caches: the others give theirs back, idle ones first used
        longest ago, until what is held (and reserved for caches being rebuilt) fits the budget, as far as
        idle ones can make it."""
        self._used[holder] = next(self._clock)
        if self.budget_bytes is None:
            return
        held = self.held()
        idle = sorted((h for h in list(self._used) if h is not holder and h.idle), key=lambda h: self._used[h])
        for other in idle:
            if held <= self.budget_bytes:
                break
            freed = other.cache_bytes()
            other.give_back()
            self.given_back += 1
            held -= freed
            log.info("cache budget: an idle conversation gave back %.1f MiB (%d so far)", freed / 2**20, self.given_back)
        self.peak = max(self.peak, held)
