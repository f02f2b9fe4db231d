"""What the engine asks of a model family: the parts that differ between families, behind one interface.

A family (model/families/<family>/) gives each session an `EngineParts` through its `engine_parts(model,
processor)`: what the talker reads (`TalkerInputs`), its talker (a `TalkerStream` subclass) and its vocoder
stream (`Vocoder`). Everything else (prompts, caches, live input, the answer loop, history) is shared, and no
file of the engine names a family: the session asks `loaded.family` for its parts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from model.engine.events import AnswerSettings
from model.engine.talker_stream import TalkerStream


class TalkerInputs(Protocol):
    """What the talker reads from the thinker: its prompt states, the reply states it speaks from, and the
    markers that end a reply."""

    def prefilling(self) -> contextlib.AbstractContextManager:
        """Whatever the talker needs captured from a thinker prefill: entered around each of its forward
        passes (once per piece of a prefill in pieces), read by `prompt_states` after the last."""

    def prompt_states(self, segment, hidden: torch.Tensor, span: slice, before: list[int], next_position: int):
        """The talker's states and rope ids for a prefilled segment (`hidden[:, span]` its last hidden states;
        `before` the ids already in the cache); they may be empty."""

    def reply(self, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The reply state of a decoded token."""

    def answer_states(self, reply: torch.Tensor, position: torch.Tensor):
        """A decoded token's entry in what later answers' talkers read (possibly empty)."""

    def voice(self, voice: dict):
        """The talker's input for a voice, as its talker stream's `answer_inputs` takes it."""

    def reply_end(self) -> torch.Tensor: ...

    def reply_pad(self) -> torch.Tensor: ...


class Vocoder(Protocol):
    """An answer's codes in, audio chunks (24 kHz float32) out as soon as they are final. A stream that
    `batches_windows` also takes `add(codes)` / `end()` and hands out each chunk's window (`next_window()`,
    a batched_step.Step whose result is the chunk's audio), so that the windows of several answers are
    solved together."""

    batches_windows: bool

    @property
    def device(self) -> torch.device: ...

    def feed(self, codes: Sequence) -> list[np.ndarray]: ...

    def flush(self) -> list[np.ndarray]: ...


class EngineParts(Protocol):
    """One loaded model's family parts, made once per session."""

    inputs: TalkerInputs
    audio_group_samples: int  # the audio encoder's attention group (samples); 0: each live window alone

    def talker(self, kv: Callable) -> TalkerStream:
        """A talker stream on a KV cache that `kv(config)` makes."""

    def vocoder(self, name: str, voice: dict, settings: AnswerSettings, voice_cache) -> Vocoder:
        """One answer's vocoder stream in voice `name` (`voice_cache`: the loaded model's, shared by sessions)."""
