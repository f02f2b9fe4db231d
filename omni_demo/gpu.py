"""Hugging Face ZeroGPU: one GPU call per conversation turn.

`spaces.GPU` is a no-op unless the Space runs on ZeroGPU (SPACES_ZERO_GPU set). There the decorated
function runs in a forked process that holds a GPU for `duration` seconds: its arguments and every yield
are pickled, nothing it changes is seen outside, and no GPU time is left between calls. So a tab's caches
cannot live from turn to turn, nor can its 2 s windows be prefilled while the user speaks. Instead each
turn is one call that rebuilds the caches from the conversation's history, prefills the turn window by
window, streams the answer, and yields the new history last. It must be called from a Gradio handler's
own thread (ZeroGPU finds the user's request there), never from the model worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from model import constants as C
from model.conversation import Part
from model.session import AnswerSettings, OmniSession, Record

# The one model of this process: the forked ZeroGPU worker reaches it without pickling it.
_loaded = None

MAX_GPU_SECONDS = 240  # ZeroGPU refuses long reservations; a turn is a few minutes at most


def on_zero_gpu() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def serve(loaded) -> None:
    global _loaded
    _loaded = loaded


def gpu(duration):
    try:
        import spaces
    except ImportError:  # `spaces` is only needed on Spaces
        return lambda function: function
    return spaces.GPU(duration=duration)


@dataclass
class TurnRequest:
    """One turn, as it crosses into the GPU call (picklable)."""

    history: list[Record]
    system_prompt: str
    settings: AnswerSettings
    audio: np.ndarray | None = None  # a voice turn: 16 kHz mono ...
    frames: list[tuple[np.ndarray, float]] = field(default_factory=list)  # ... and its camera frames
    parts: list[Part] | None = None  # a typed or uploaded turn


def turn_seconds(request: TurnRequest) -> int:
    """GPU time to reserve: rebuilding the history, encoding the turn's media, decoding the answer."""
    def media_seconds(audio, frames) -> float:
        return (0 if audio is None else len(audio) / C.INPUT_SAMPLE_RATE) + len(frames) / C.VIDEO_FPS

    history = 0.0
    for record in request.history:
        if record.kind == "live":
            history += media_seconds(*record.payload)
        elif record.kind == "user":
            history += sum(getattr(p, "seconds", 0.0) for p in record.payload)
    turn = media_seconds(request.audio, request.frames) + sum(getattr(p, "seconds", 0.0) for p in request.parts or ())
    # About 3x real time for the answer's speech (a token is ~0.3 s of it) and 0.1 s per second of media.
    answer = request.settings.max_new_tokens * 0.3
    return int(min(MAX_GPU_SECONDS, 20 + 0.1 * (history + turn) + answer))


@gpu(duration=turn_seconds)
def run_turn(request: TurnRequest) -> Iterator:
    """The answer's events (TextDelta, AudioChunk, ...), then the conversation's new history."""
    session = OmniSession(_loaded, system_prompt=request.system_prompt)
    session.restore(request.history)
    if request.parts is not None:
        session.add_user_turn(*request.parts)
    else:
        session.feed(request.audio, request.frames)
        session.end_user_turn()
    yield from session.respond(request.settings)
    yield session.history
