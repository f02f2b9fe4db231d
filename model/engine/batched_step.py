"""One decoder forward for the one-token steps of several conversations.

A decode step reads every weight of the decoder to make one token; on a GPU that costs about the same for
one sequence as for eight, so the model thread gathers the steps of every answering conversation and runs
those on the same decoder (the thinker's, or the talker's) as one batch.

A `Step` is work an answer asks the model thread for instead of doing it (AnswerDecoder with `batched`);
`run_steps` runs a round's steps, each kind together: the vocoder's windows (a family's, e.g.
model/families/qwen2_5_omni/token2wav.py's WindowStep), and decode steps.

A `DecodeStep` is what an answer asks for instead of running its forward:
its input (one position's embedding and rope ids), its conversation's cache, and `finish`, the bookkeeping
that follows the forward (the cache's length, the talker states, the logits). `run_steps` runs the steps of
one round: alone, as before, or batched. `finish` runs right after the forward, before anyone sees the
result, so a conversation's cache and its bookkeeping never disagree, whenever its answer is closed.

Batching: each conversation keeps its own cache (GrowingKV or StaticKV, model/engine/kv_cache.py). For one
batched forward their keys and values are left-padded to the longest and stacked; a padding mask hides the
pads, each row keeps its own 3-D rope ids, and each row's new keys and values go back to its own cache. That
copies the caches once per step, about what the attention reads anyway, and keeps everything else (rewinds,
live windows, restores, one conversation's prefill, a lone step's compiled form on CUDA) exactly as it was.
Where every conversation of a group has a static cache (decode "static" or "compiled": a GPU's), the model
thread keeps the batch's own padded cache between steps instead (model/engine/batch_cache.py): no gathering
per step, fixed shapes per batch size, and so a compiled step (CUDA graphs) per bucket.
Rows may differ from a lone forward by float rounding (matrix kernels block a batch differently):
tests/test_batched_step.py bounds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from model.engine.batch_cache import BatchCaches
from model.engine.kv_cache import StaticKV


class Step:
    """Work an answer asks the model thread for instead of doing it: run alone (`run`), or with the other
    answers' steps of its kind (`run_together`). `result` is set when it has run."""

    result: Any = None
    ran: bool = False

    def run(self) -> None:
        raise NotImplementedError

    @classmethod
    def run_together(cls, steps: list[Step]) -> None:
        for step in steps:
            step.run()


@dataclass(eq=False)
class DecodeStep(Step):
    module: Any  # the decoder (the thinker's language model or the talker's model)
    cache: Any  # the conversation's GrowingKV or StaticKV
    embeds: torch.Tensor  # (1, 1, hidden)
    position_ids: torch.Tensor  # (3, 1, 1)
    finish: Callable[[torch.Tensor], Any]  # the last hidden state (1, 1, hidden) -> the step's result
    result: Any = field(default=None, repr=False)
    ran: bool = False

    def run(self) -> None:
        """This step alone, as a conversation decodes on its own."""
        self._done(self.cache.forward(self.module, self.embeds, self.position_ids))

    def _done(self, hidden: torch.Tensor) -> None:
        self.result = self.finish(hidden)
        self.ran = True

    @classmethod
    def run_together(cls, steps: list[DecodeStep], caches: BatchCaches | None = None) -> None:
        """One forward per decoder: on the model thread's batch cache (`caches`) where every conversation
        has a static cache (a GPU's), else by gathering the caches."""
        groups: dict[int, list[DecodeStep]] = {}
        for step in steps:
            groups.setdefault(id(step.module), []).append(step)
        for group in groups.values():
            if len(group) == 1:
                group[0].run()  # alone: a static cache's compiled step too
            elif caches is not None and all(isinstance(step.cache, StaticKV) for step in group):
                caches.run(group)
            else:
                _batched(group)


def run_steps(steps: list[Step], batch: bool = True, caches: BatchCaches | None = None) -> None:
    """Runs each step once: with `batch`, each kind's together (decode steps, vocoder windows), else alone.
    `caches`: the calling thread's batch caches, for decode steps on static caches."""
    kinds: dict[type, list[Step]] = {}
    for step in steps:
        kinds.setdefault(type(step), []).append(step)
    for kind, group in kinds.items():
        if not batch or len(group) == 1:
            for step in group:
                step.run()
        elif kind is DecodeStep:
            DecodeStep.run_together(group, caches)
        else:
            kind.run_together(group)


@torch.no_grad()
def _batched(steps: list[DecodeStep]) -> None:
    lengths = [step.cache.get_seq_length() for step in steps]
    longest = max(lengths)
    layers = []
    for index in range(len(steps[0].cache.layers)):
        keys, values = [], []
        for step, length in zip(steps, lengths):
            held_keys, held_values = step.cache.held(index)
            keys.append(F.pad(held_keys, (0, 0, longest - length, 0)))
            values.append(F.pad(held_values, (0, 0, longest - length, 0)))
        layers.append((torch.cat(keys), torch.cat(values)))
    stacked = DynamicCache(ddp_cache_data=layers)
    first = steps[0].embeds
    mask = torch.zeros((len(steps), longest + 1), dtype=torch.long, device=first.device)
    for row, length in enumerate(lengths):
        mask[row, longest - length :] = 1
    out = steps[0].module(
        inputs_embeds=torch.cat([step.embeds for step in steps]),
        position_ids=torch.cat([step.position_ids for step in steps], dim=1),
        attention_mask=mask,
        past_key_values=stacked,
        use_cache=True,
    )
    hidden = out.last_hidden_state
    for row, step in enumerate(steps):
        for index, layer in enumerate(stacked.layers):
            step.cache.append(index, layer.keys[row : row + 1, :, -1:], layer.values[row : row + 1, :, -1:])
        step._done(hidden[row : row + 1])
