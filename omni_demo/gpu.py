"""Hugging Face ZeroGPU: one GPU call per conversation turn.

`spaces.GPU` is a no-op unless the Space runs on ZeroGPU (SPACES_ZERO_GPU set). There the decorated
function runs in a forked process that holds a GPU for `duration` seconds: its arguments and every yield
are pickled, nothing it changes is seen outside, and no GPU time is left between calls. So a tab's caches
cannot live from turn to turn, nor can its 2 s windows be prefilled while the user speaks. Instead each
turn is one call that rebuilds the caches from the conversation's history (the same cache the live turns
built: a live turn's record replays to it token for token), prefills the turn window by window, and
streams the answer. It hands the history out after the prefill and again at the end; a call cut short
keeps the first, with the answer's ids as they streamed. It must be called from a Gradio handler's own
thread (ZeroGPU finds the user's request there), never from the model worker: `ZeroGpuModel.answer` runs
in `follow`.

An exception inside the call reaches the caller as `gr.Error(<its class name>, title="ZeroGPU worker
error")`, its message lost (spaces/zero/wrappers.py), so an input the model refuses comes out of the call
as a value, `TurnRefused`, with the message meant for the user.

The call asks for the GPU the model needs (`spaces.GPU(size=...)`): half a card, 48 GB, unless the weights
leave too little of it for the caches, then the whole card (96 GB, twice the quota).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import gradio as gr
import numpy as np

from model.engine.events import AnswerSettings, ContextTrimmed
from model.engine.history import AnswerTurn, LiveTurn, Record, UserTurn, media_seconds
from model.inputs.conversation import Part
from model.session import OmniSession
from omni_demo.tab_model import TabModel
from omni_demo.view import Answer

# The one model of this process (the forked ZeroGPU worker reaches it without pickling it), and its GPU call.
_loaded = None
run_turn = None

MAX_GPU_SECONDS = 240  # ZeroGPU refuses long reservations; a turn is a few minutes at most
GIB = 1024**3
# ZeroGPU's half card ("large", the default): 48 GB. The weights must leave this much of it for the caches,
# activations and the vocoder, or the call asks for the whole card ("xlarge", 96 GB).
LARGE_GPU_GIB = 48e9 / GIB
HEADROOM_GIB = 10.0
WORKER_ERROR_TITLE = "ZeroGPU worker error"  # the title `spaces` gives an exception raised inside the call


def on_zero_gpu() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def weights_gib(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / GIB


def gpu_size(model) -> str:
    """The ZeroGPU size the model needs: "large" (half a card) or "xlarge" (the whole one)."""
    return "large" if weights_gib(model) + HEADROOM_GIB <= LARGE_GPU_GIB else "xlarge"


def serve(loaded) -> None:
    """Makes `loaded` the model of the GPU calls, each asking for the size it needs."""
    global _loaded, run_turn
    _loaded = loaded
    run_turn = gpu(duration=turn_seconds, size=gpu_size(loaded.model))(answer_turn)


def gpu(duration, size: str):
    try:
        import spaces
    except ImportError:  # `spaces` is only needed on Spaces
        return lambda function: function
    return spaces.GPU(duration=duration, size=size)


@dataclass(frozen=True)
class TurnRefused:
    """The model refused the turn's input (too long, an unknown voice): the message for the user."""

    message: str


@dataclass
class TurnRequest:
    """One turn, as it crosses into the GPU call (picklable)."""

    history: list[Record]
    system_prompt: str
    settings: AnswerSettings
    audio: np.ndarray | None = None  # a voice turn: 16 kHz mono ...
    frames: list[tuple[np.ndarray, float]] = field(default_factory=list)  # ... and its camera frames
    parts: list[Part] | None = None  # a typed or uploaded turn
    max_positions: int | None = None  # what the conversation may use (default: the model's)


def turn_seconds(request: TurnRequest) -> int:
    """GPU time to reserve: rebuilding the history, encoding the turn's media, decoding the answer."""
    if request.parts is not None:
        turn = media_seconds([UserTurn(request.parts)])
    else:
        turn = media_seconds([LiveTurn(request.audio, request.frames)])
    # About 3x real time for the answer's speech (a token is ~0.3 s of it) and 0.1 s per second of media.
    answer = request.settings.max_new_tokens * 0.3
    return int(min(MAX_GPU_SECONDS, 20 + 0.1 * (media_seconds(request.history) + turn) + answer))


def answer_turn(request: TurnRequest) -> Iterator:
    """The GPU call's body: the conversation's history with the user's turn in it, then the answer's events
    (TextDelta, AudioChunk, ...; the history again after a ContextTrimmed), then the history with the answer.
    An input the model refuses gives `TurnRefused` instead, and nothing more."""
    # ZeroGPU does not support torch.compile (its documentation): the growing cache, decoded eagerly.
    session = OmniSession(_loaded, system_prompt=request.system_prompt, decode="growing",
                          max_positions=request.max_positions)
    try:
        session.restore(request.history)
        if request.parts is not None:
            session.add_user_turn(*request.parts)
        else:
            session.feed(request.audio, request.frames)
            session.end_user_turn()
        yield session.history
        for event in session.respond(request.settings):
            yield event
            if isinstance(event, ContextTrimmed):
                yield session.history
    except ValueError as error:  # refused input: its message would not cross the boundary as an exception
        yield TurnRefused(str(error))
        return
    yield session.history


class ZeroGpuModel(TabModel):
    """A tab's conversation on ZeroGPU: its history, and one GPU call per turn, made from `follow`'s thread
    (ZeroGPU finds the user's request there). Nothing of the model lives here between turns. The history is
    read and written by that thread and by the worker's jobs (keep what was heard, clear), each under the
    history's own lock, for memory updates only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._records: list[Record] = []
        self._conversation = 0  # bumped by `clear`: a call still running then belongs to the old one
        self._kept: tuple[Answer, int] | None = None  # the last call whose history was kept, and where its turn began
        self._lock = threading.Lock()

    @property
    def history(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def feed(self, audio, frames) -> Iterator[None]:
        raise RuntimeError("on ZeroGPU a turn is given whole, in its GPU call")

    def continue_turn(self, before) -> Iterator[None]:
        """The continued turn is given whole in the next call. A call cut short by the retraction kept no
        history; one that had already finished (its answer not heard yet) gives its turn and answer back."""
        with self._lock:
            if self._kept is not None and self._kept[0].retracted:
                self._records = self._records[: self._kept[1]]
                self._kept = None
        yield

    def answer(self, answer: Answer, rest=None) -> Iterator[None]:
        """The turn's GPU call, one step per event. A call cut short (barge-in, a closed tab) never hands its
        history back: the history is then what the call said after the prefill, and the answer's ids as they
        streamed, exactly the ids the model chose."""
        turn = answer.turn
        with self._lock:
            history, conversation = list(self._records), self._conversation
        request = TurnRequest(history, self.system_prompt, answer.settings,
                              turn.whole_audio() if turn is not None else None,
                              list(turn.frames) if turn is not None else [], answer.parts, self.max_positions)
        self.view.open_answer(answer)
        yield
        history, final = None, False  # as the call hands it out; `final`: the one after the answer
        calls = run_turn(request)
        try:
            for item in calls:
                if isinstance(item, TurnRefused):
                    raise ValueError(item.message)
                if isinstance(item, list):
                    history, final = item, answer.done is not None
                    continue
                self.view.show(answer, item, time.time() - answer.timing.turn_end_wall)
                yield
                if answer.stop_requested or self.closed() or self._overdue(answer):
                    break  # closing the call cancels it on the GPU
        except Exception as error:  # noqa: BLE001 - the session goes on without this turn
            self.recover(error, answer)
            return
        finally:
            calls.close()
        if not final and history is not None:  # cut off, perhaps after its last event: the ids as they streamed
            history = [*history, AnswerTurn(list(answer.tokens))]
        with self._lock:
            if history is not None and conversation == self._conversation and not answer.retracted:
                # It ends with the turn and its answer (older turns may have been trimmed from its front).
                self._records, self._kept = history, (answer, len(history) - 2)
        self._close(answer)

    def clear(self, files) -> Iterator[None]:
        with self._lock:
            self._records, self._conversation, self._kept = [], self._conversation + 1, None
        yield from super().clear(files)

    def set_system_prompt(self, system_prompt: str) -> Iterator[None]:
        self.system_prompt = system_prompt  # the next call rebuilds the caches with it
        yield

    def prefill_failed(self, error: BaseException) -> None:
        raise RuntimeError("on ZeroGPU nothing is prefilled between calls")

    @staticmethod
    def failure_message(error: BaseException) -> str:
        """`spaces` raises a failure inside the call as gr.Error(<class name>, title=WORKER_ERROR_TITLE) and its
        own refusals (the quota, a duration too long) as gr.Error with a message for the user."""
        if isinstance(error, gr.Error) and error.title == WORKER_ERROR_TITLE:
            return f"The model failed on this turn ({error.message}). Your conversation is kept; try again."
        if isinstance(error, gr.Error):
            return error.message
        return TabModel.failure_message(error)

    def _keep_in_memory(self, keep: int) -> None:
        with self._lock:
            if self._records and isinstance(self._records[-1], AnswerTurn):
                self._records[-1] = AnswerTurn(self._records[-1].tokens[:keep])
