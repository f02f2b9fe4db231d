"""The batch's own KV cache, kept from one batched decode step to the next: fixed shapes, so the step can be
compiled (CUDA graphs on CUDA) once per batch size and length bucket.

The gathering step (batched_step._batched) pads and stacks every conversation's cache at every step: its
shapes change with every token, so it cannot be captured, and it copies all the caches once per step. Here
one decoder's batch keeps a StaticCache of `rows` x `size` positions between steps (one per model thread:
BatchCaches is the worker's). Each conversation of the batch has a row, its history left-padded so that all
rows end at the shared write position `end`; a step writes every row's new position at `end` (the cache's
length, as StaticCache counts it) and a 2-D mask per row hides the padding (causality hides what lies past
`end`). After the step each conversation's own cache gets its row's new keys and values too: the
conversation's cache stays the truth (rewinds, live windows, lone steps, restores read it), and its
`version` tells the batch whether it still holds what its row holds. So in a run of rounds where the same
conversations decode, a step costs its forward and one position's copy per row; a conversation that joins
fills a free row; anything else (the batch grows past its rows, a conversation's cache changed outside the
batch, the rows are full) builds the batch's cache again from the conversations' own, what the gathering
step does every step.

Rows: 2, 4, 8 or 16 (a batch of 3 runs as 4, its spare row a dummy whose output nobody reads); a batch
that shrinks keeps its rows (an answer whose talker skips a round takes its row again, copied alone) until
it fills a quarter of them. Positions: a power of two with room to go on, at least 256. Memory: rows x
positions per decoder, which the cache budget counts (omni_demo/cache_budget.py).
"""

from __future__ import annotations

import logging

import torch
from transformers import StaticCache

from model.engine.kv_cache import compile_for, forward_step

log = logging.getLogger(__name__)

ROWS = (2, 4, 8, 16)
MIN_POSITIONS = 256
HEADROOM = 128  # positions a new batch cache can step before it must be built bigger
RECOMPILE_LIMIT = 64  # compiled shapes per step function: (rows, positions) buckets, and a lone step's


def _rows_for(count: int) -> int:
    return next(rows for rows in ROWS if rows >= count)


def _positions_for(end: int) -> int:
    size = MIN_POSITIONS
    while size < end + HEADROOM:
        size *= 2
    return size


class BatchCache:
    """One decoder's batch: a StaticCache of `rows` x `size`, its rows' conversations, and their masks."""

    def __init__(self, config, rows: int, size: int, like: torch.Tensor):
        """`like`: a layer's keys (dtype, device, heads, head size) of one of the conversations."""
        self.rows, self.size = rows, size
        self.cache = StaticCache(config=config, max_cache_len=size)
        empty = like.new_empty((rows, like.shape[1], 0, like.shape[3]))
        for layer in self.cache.layers:
            layer.lazy_initialization(empty, empty)
        self.mask = torch.ones((rows, size), dtype=torch.long, device=like.device)
        self.end = 0  # the next position every row writes
        self.members: dict[int, tuple[object, int]] = {}  # row -> (its conversation's StaticKV, its version)

    def rows_of(self, caches: list) -> list[int] | None:
        """Each cache's row, giving free rows to newcomers that fit; None if the batch must be built again."""
        if not self.rows // 4 < len(caches) <= self.rows or self.end >= self.size:
            return None  # too many, or so few that most of the rows would be dummies: built to fit
        wanted = {id(cache) for cache in caches}
        for row in [row for row, (cache, _) in self.members.items() if id(cache) not in wanted]:
            del self.members[row]  # left the batch: its row is a dummy from now on
        if any(cache.version != version for cache, version in self.members.values()):
            return None  # changed outside the batch (a rewind, a prefill, a lone step)
        row_of = {id(cache): row for row, (cache, _) in self.members.items()}
        free = [row for row in range(self.rows) if row not in self.members]
        placed = []
        for cache in caches:
            if id(cache) not in row_of:
                if cache.get_seq_length() > self.end:
                    return None
                row_of[id(cache)] = free.pop(0)
                self._fill(row_of[id(cache)], cache)
            placed.append(row_of[id(cache)])
        return placed

    def fill_all(self, caches: list) -> list[int]:
        self.end = max(cache.get_seq_length() for cache in caches)
        self.members = {}
        self.mask.fill_(1)  # spare rows see their own dummy positions, and whatever is left there (finite)
        for row, cache in enumerate(caches):
            self._fill(row, cache)
        return list(range(len(caches)))

    def _fill(self, row: int, cache) -> None:
        """`cache`'s history into `row`, ending where every row ends."""
        length = cache.get_seq_length()
        start = self.end - length
        for index, layer in enumerate(self.cache.layers):
            keys, values = cache.held(index)
            layer.keys[row, :, start : self.end] = keys[0]
            layer.values[row, :, start : self.end] = values[0]
        self.mask[row, :start] = 0
        self.mask[row, start:] = 1
        self.members[row] = (cache, cache.version)

    def wrote(self, row: int, cache) -> None:
        """The step's new position of `row` into its conversation's own cache."""
        at = slice(self.end, self.end + 1)
        for index, layer in enumerate(self.cache.layers):
            cache.append(index, layer.keys[row : row + 1, :, at], layer.values[row : row + 1, :, at])
        self.members[row] = (cache, cache.version)


class BatchCaches:
    """The model thread's batch caches, one per decoder, and their compiled steps (a group of steps runs
    compiled when every one of its caches is a compiled one: decode "compiled")."""

    def __init__(self):
        self._batches: dict[int, BatchCache] = {}  # id(decoder) -> its batch
        self._compiled: dict[int, object] = {}  # id(decoder) -> its compiled batch step
        self.builds = 0  # batch caches built from the conversations' own (for tests)
        self.steps = 0  # batched steps run (for tests)

    @torch.no_grad()
    def run(self, steps: list) -> None:
        """Decode steps of one decoder, each on a StaticKV of its own conversation."""
        module = steps[0].module
        caches = [step.cache for step in steps]
        batch = self._batches.get(id(module))
        rows = batch.rows_of(caches) if batch is not None else None
        if rows is None:
            end = max(cache.get_seq_length() for cache in caches)
            wanted = (_rows_for(len(caches)), _positions_for(end))
            if batch is None or (batch.rows, batch.size) != wanted:
                self._batches.pop(id(module), None)  # free the old one before allocating
                batch = BatchCache(caches[0].config, *wanted, like=caches[0].held(0)[0])
                self._batches[id(module)] = batch
            rows = batch.fill_all(caches)
            self.builds += 1
        embeds = torch.zeros((batch.rows, 1, steps[0].embeds.shape[-1]), dtype=steps[0].embeds.dtype, device=steps[0].embeds.device)
        positions = torch.zeros((3, batch.rows, 1), dtype=steps[0].position_ids.dtype, device=embeds.device)
        for row, step in zip(rows, steps):
            embeds[row] = step.embeds[0]
            positions[:, row] = step.position_ids[:, 0]
        hidden = self._forward(module, batch, embeds, positions, all(cache.compiled for cache in caches))
        self.steps += 1
        for row, step in zip(rows, steps):
            batch.wrote(row, step.cache)
        batch.end += 1
        for row, step in zip(rows, steps):
            step._done(hidden[row : row + 1])

    def _forward(self, module, batch: BatchCache, embeds, positions, compiled: bool) -> torch.Tensor:
        for layer in batch.cache.layers:
            layer.cumulative_length.fill_(batch.end)  # in place: the compiled step reads its address
        if compiled:
            try:
                if embeds.is_cuda:  # a new step: CUDA graphs may reuse the last step's output buffers
                    torch.compiler.cudagraph_mark_step_begin()
                return self._compiled_step(module)(module, batch.cache, embeds, positions, attention_mask=batch.mask).clone()
            except Exception as error:  # noqa: BLE001 -- any compiler failure: the eager step gives the same answer
                log.warning("torch.compile failed on this decoder's batched step (%s); batching eagerly from here", error)
                self._compiled[id(module)] = forward_step
                for layer in batch.cache.layers:
                    layer.cumulative_length.fill_(batch.end)  # whatever the failed step wrote is past `end`
        return forward_step(module, batch.cache, embeds, positions, attention_mask=batch.mask)

    def nbytes(self) -> int:
        """What they hold (from any thread: a snapshot of the batches)."""
        batches = list(self._batches.values())
        return sum(layer.keys.nbytes + layer.values.nbytes for batch in batches for layer in batch.cache.layers)

    def clear(self) -> None:
        """Lets the batch caches go (nobody is answering): their memory, and the conversations they refer to."""
        self._batches.clear()

    def _compiled_step(self, module):
        if id(module) not in self._compiled:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            self._compiled[id(module)] = compile_for(module, forward_step)
        return self._compiled[id(module)]
