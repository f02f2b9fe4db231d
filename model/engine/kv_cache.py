"""The KV caches the thinker and the talker run on, and the decode step each one gives.

`GrowingKV` is transformers' DynamicCache, which grows by a concatenation per step: the default on a CPU.
`StaticKV` holds transformers' StaticCache: keys and values in tensors allocated once, so every one-token
decode step has the same shapes and the same tensor addresses, which `torch.compile` can capture (with CUDA
graphs on CUDA, `mode="reduce-overhead"`: one launch per step instead of hundreds). Positions past the cache's
length are masked by the causal mask, so going back (a live window redone, an answer dropped) only moves
the length. A conversation that outgrows the allocation moves to one twice the size (the step is then
captured again, once).

Both take the same calls: `forward(module, embeds, position_ids)` runs the decoder over new positions and
returns its last hidden states; `keep(length)` forgets everything after `length`; `held` and `append` read a
layer's keys and values and add one position's (a batched step, model/engine/batched_step.py).
"""

from __future__ import annotations

import logging

import torch
from transformers import DynamicCache, StaticCache

log = logging.getLogger(__name__)

STATIC_START_LENGTH = 4096  # positions a static cache holds before it first grows


class GrowingKV:
    def __init__(self, config):
        self.cache = DynamicCache(config=config)

    @property
    def layers(self):
        return self.cache.layers

    def get_seq_length(self) -> int:
        return self.cache.get_seq_length()

    def forward(self, module, embeds: torch.Tensor, position_ids: torch.Tensor, **extra) -> torch.Tensor:
        """`extra`: more of the decoder's arguments (Qwen3-Omni's deepstack vision features)."""
        total = self.get_seq_length() + embeds.shape[1]
        # An all-ones mask, as generate() passes, so the attention kernels see what they see there.
        mask = torch.ones((1, total), dtype=torch.long, device=embeds.device)
        out = module(
            inputs_embeds=embeds, position_ids=position_ids, attention_mask=mask, past_key_values=self.cache, use_cache=True, **extra
        )
        return out.last_hidden_state

    def keep(self, length: int) -> None:
        drop = self.get_seq_length() - length
        if drop:
            self.cache.crop(-drop)

    def held(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s keys and values, (1, heads, length, dim) each."""
        layer = self.cache.layers[index]
        return layer.keys, layer.values

    def append(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """One more position's keys and values for layer `index` (a batched step's row); the last layer's
        append completes the position."""
        self.cache.update(keys, values, index)

    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers if layer.is_initialized)


class StaticKV:
    """`compiled`: one-token steps run through `torch.compile` (prefills of several positions stay eager)."""

    def __init__(self, config, compiled: bool = False, length: int = STATIC_START_LENGTH):
        self.config = config
        self.compiled = compiled
        self.cache = StaticCache(config=config, max_cache_len=length)
        self.size = length  # positions allocated
        self.length = 0
        self.version = 0  # changes with every change of what it holds (a batch's cache copies it: batch_cache.py)

    @property
    def layers(self):
        return self.cache.layers

    def get_seq_length(self) -> int:
        return self.length

    def forward(self, module, embeds: torch.Tensor, position_ids: torch.Tensor, **extra) -> torch.Tensor:
        count = embeds.shape[1]
        if self.length + count > self.size:
            self._grow(self.length + count)
        if self.compiled and count == 1:
            try:
                if embeds.is_cuda:  # a new step: CUDA graphs may reuse the last step's output buffers
                    torch.compiler.cudagraph_mark_step_begin()
                # A copy: the captured graph writes its next output over this one.
                hidden = compiled_step(module)(module, self.cache, embeds, position_ids).clone()
            except Exception as error:  # noqa: BLE001 -- any compiler failure: the eager step gives the same answer
                log.warning("torch.compile failed on this decoder's step (%s); decoding eagerly from here", error)
                self.compiled = False
                self.keep(self.length)  # undo whatever the failed step wrote
                hidden = forward_step(module, self.cache, embeds, position_ids)
        else:
            hidden = forward_step(module, self.cache, embeds, position_ids, **extra)
        self.length += count
        self.version += 1
        return hidden

    def keep(self, length: int) -> None:
        if length > self.length:
            raise ValueError(f"the cache holds {self.length} positions, not {length}")
        self.length = length
        self.version += 1
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.cumulative_length.fill_(length)  # in place: its address is part of the captured step

    def held(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.cache.layers[index]
        return layer.keys[:, :, : self.length], layer.values[:, :, : self.length]

    def append(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        if self.length + 1 > self.size:
            self._grow(self.length + 1)
        layer = self.cache.layers[index]
        layer.keys[:, :, self.length] = keys[:, :, 0]
        layer.values[:, :, self.length] = values[:, :, 0]
        if index == len(self.cache.layers) - 1:
            self.length += 1
            self.version += 1
            for each in self.cache.layers:
                each.cumulative_length.fill_(self.length)

    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers if layer.is_initialized)

    def _grow(self, needed: int) -> None:
        size = self.size
        while size < needed:
            size *= 2
        bigger = StaticCache(config=self.config, max_cache_len=size)
        for old, new in zip(self.cache.layers, bigger.layers):
            if old.is_initialized:
                new.lazy_initialization(old.keys[:, :, :0], old.values[:, :, :0])
                new.keys[:, :, : self.length] = old.keys[:, :, : self.length]
                new.values[:, :, : self.length] = old.values[:, :, : self.length]
                new.cumulative_length.fill_(self.length)
        self.cache, self.size = bigger, size


def forward_step(module, cache: StaticCache, embeds: torch.Tensor, position_ids: torch.Tensor, **extra) -> torch.Tensor:
    # A conversation's own cache needs no 2-D mask: the causal mask over the allocation comes from the cache's
    # length alone. A batch's (batch_cache.py) passes one in `extra`, to hide its rows' left padding.
    out = module(inputs_embeds=embeds, position_ids=position_ids, past_key_values=cache, use_cache=True, **extra)
    return out.last_hidden_state


_COMPILED: dict[int, object] = {}  # one compiled step per decoder module, shared by every conversation


def compiled_step(module):
    key = id(module)
    if key not in _COMPILED:
        _COMPILED[key] = compile_for(module, forward_step)
    return _COMPILED[key]


def compile_for(module, step):
    """`step` (a decode step of `module`) through torch.compile: fixed shapes, CUDA graphs on CUDA."""
    on_cuda = next(module.parameters()).device.type == "cuda"
    return torch.compile(step, dynamic=False, mode="reduce-overhead" if on_cuda else None)
