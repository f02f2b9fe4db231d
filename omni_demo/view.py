"""What the page shows for one tab, and each answer's state as the page and the model share it.

The handler threads (a typed message, Stop, the microphone ending a turn) and the model worker (an answer's
text and speech) all update a `TabView`; its lock is held for memory updates only, never across disk,
network or model work, so the worker never waits on a handler's I/O. `follow` reads a `View` snapshot each
time the version changes.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model import constants as C
from model.engine.encode import TurnMedia
from model.engine.events import (
    AnswerDone,
    AnswerSettings,
    AudioChunk,
    ContextTrimmed,
    SpeechPending,
    TextDelta,
)
from model.inputs.conversation import Part
from omni_demo.listener import HeardTurn
from omni_demo.playback import PlayerFeed, samples_seconds
from omni_demo.playout import PlaybackClock, SpeechPace
from omni_demo.timings import TurnTiming

# When an answer is cut off before its speech was complete, how much of its text was heard is estimated
# from the time heard at a typical speaking rate (English speech runs at about 2.5 words, 3 tokens, a second).
SPOKEN_TOKENS_PER_SECOND = 3.0


@dataclass
class Answer:
    """One answer: how it is played, whether it was cut off, and what it said."""

    timing: TurnTiming
    settings: AnswerSettings
    feed: PlayerFeed
    clock: PlaybackClock = field(default_factory=PlaybackClock)
    stem: str = "answer"  # its files' names begin so: unique within the tab, across clears
    message: dict | None = None  # its text in the chat
    finished: bool = False
    failed: bool = False  # the model failed on it: it is not in the model's memory
    stop_requested: bool = False
    retracted: bool = False  # the user went on with their turn before hearing any of it: it leaves no trace
    heard_at_stop: float | None = None  # seconds of speech heard when the user cut in
    timed_out: bool = False
    text: str = ""
    tokens: list[int] = field(default_factory=list)  # every token chosen, as they streamed
    chunks: list[np.ndarray] = field(default_factory=list)
    done: AnswerDone | None = None
    speech_complete: bool = False  # the talker finished: all of the answer exists as audio
    clip: Path | None = None
    turn: HeardTurn | None = None  # what it answers: a voice turn, or typed/uploaded parts
    parts: list[Part] | None = None
    media: TurnMedia | None = None  # the parts' media through the processor, made on the handler's thread
    # Made in the user's pause, before their turn ended: nothing of it is shown or played until `release`.
    held: bool = False
    held_events: list = field(default_factory=list)

    @property
    def text_only(self) -> bool:
        return self.settings.text_only


def heard_tokens(answer: Answer, heard_seconds: float) -> int:
    """How many of the answer's tokens the user heard before cutting in."""
    if answer.text_only:
        return len(answer.tokens)
    audio_seconds = answer.timing.audio_seconds
    if answer.speech_complete and audio_seconds > 0:
        return math.ceil(len(answer.tokens) * min(1.0, heard_seconds / audio_seconds))
    return min(len(answer.tokens), math.ceil(heard_seconds * SPOKEN_TOKENS_PER_SECOND))


@dataclass
class View:
    """A snapshot of what the page shows for this tab."""

    chat: list[dict]
    player: str
    status: str
    timings: list[TurnTiming]


class TabView:
    def __init__(self, pace: SpeechPace | None = None):
        self.pace = pace or SpeechPace()  # the server's, shared by its tabs: each answer's is recorded there
        self.lock = threading.RLock()  # `with view.lock:` reads; `with view:` changes
        self._changed = threading.Condition(self.lock)
        self.version = 0
        self.chat: list[dict] = []
        self.timings: list[TurnTiming] = []
        self.answer: Answer | None = None  # the answer in flight, or the last one

    def __enter__(self) -> TabView:
        """`with view:` makes changes; the page is told once they are made."""
        self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.version += 1
        self._changed.notify_all()
        self.lock.release()

    def wait(self, seen: int, timeout: float, closed) -> int:
        """Waits until the version is not `seen` (or `closed()`); returns the version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen or closed(), timeout=timeout)
            return self.version

    def snapshot(self, status: str) -> View:
        with self.lock:
            feed = self.answer.feed.value() if self.answer else ""
            return View([dict(m) for m in self.chat], feed, status, list(self.timings))

    def say_error(self, message: str) -> None:
        with self:
            self.chat.append({"role": "assistant", "content": message, "metadata": {"title": "⚠️ Could not answer"}})

    def open_answer(self, answer: Answer) -> None:
        with self:
            answer.message = {"role": "assistant", "content": ""}
            if not answer.retracted and not answer.held:
                self.chat.append(answer.message)

    def release(self, answer: Answer, turn_end_wall: float, speech_end_wall: float) -> None:
        """The user's turn has ended (at `turn_end_wall`, their voice at `speech_end_wall`): an answer
        prepared in their pause is shown and played from here, all that was made of it at once."""
        with self:
            timing = answer.timing
            timing.prepared = max(0.0, turn_end_wall - timing.turn_end_wall)
            timing.turn_end_wall, timing.speech_end_wall = turn_end_wall, speech_end_wall
            answer.held = False
            if answer.message is not None:
                self.chat.append(answer.message)
            for event in answer.held_events:
                self._show(answer, event, 0.0)
            answer.held_events.clear()

    def retract(self, answer: Answer) -> None:
        """The user went on speaking: the answer and their turn's messages leave the chat (the turn's come
        back, whole, when it ends)."""
        with self:
            answer.retracted = answer.stop_requested = True
            answer.feed.stop()
            answer.clock.stop()
            gone = [answer.message, *(answer.turn.entries if answer.turn is not None else [])]
            self.chat = [m for m in self.chat if not any(m is g for g in gone)]
            self.timings = [t for t in self.timings if t is not answer.timing]  # an answer already finished

    def show(self, answer: Answer, event, elapsed: float) -> None:
        """One event of the answer; `elapsed` is the seconds since the user's turn ended."""
        if isinstance(event, SpeechPending):  # nothing to show
            return
        with self:
            if answer.retracted:
                return
            if answer.held:
                answer.held_events.append(event)
                return
            self._show(answer, event, elapsed)

    def _show(self, answer: Answer, event, elapsed: float) -> None:
        """`show`, under the lock, for an answer not held back."""
        timing = answer.timing
        if isinstance(event, TextDelta):
            answer.text += event.text
            answer.tokens.append(event.token)
            answer.message["content"] = answer.text
            timing.first_text = timing.first_text if timing.first_text is not None else elapsed
        elif isinstance(event, AudioChunk):
            made = answer.clock.add(samples_seconds(event.samples))
            answer.feed.add(event.samples, made)
            answer.chunks.append(event.samples)
            timing.first_audio = timing.first_audio if timing.first_audio is not None else elapsed
        elif isinstance(event, ContextTrimmed):
            notice = {"role": "assistant", "content": event.message, "metadata": {"title": "ℹ️ Earlier turns dropped"}}
            self.chat.insert(self.chat.index(answer.message), notice)
        elif isinstance(event, AnswerDone):
            answer.done = event
            answer.tokens = list(event.tokens)

    def end_answer(self, answer: Answer, total: float) -> np.ndarray | None:
        """The answer's decoding has ended: its timings; returns its speech, for its clip."""
        timing, done = answer.timing, answer.done
        with self:
            if answer.retracted:
                return None
            timing.total = total
            timing.audio_seconds = sum(len(c) for c in answer.chunks) / C.OUTPUT_SAMPLE_RATE
            timing.interrupted = (done is not None and done.interrupted) or answer.stop_requested
            answer.feed.end()
            clock = answer.clock
            clock.end()  # all of the speech has come: the player's plan is final (unless the user cuts in)
            start = clock.first_start
            played = start is not None and (clock.stopped_at is None or start < clock.stopped_at)  # not cut first
            if played and timing.first_audio is not None:
                timing.first_audio_played = timing.first_audio + start - clock.first_arrival
                gaps = clock.underruns() if clock.stopped_at is None else []
                timing.underruns, timing.underrun_seconds = len(gaps), sum(gaps)
            self.pace.record(clock, complete=not timing.interrupted)
            self.timings.append(timing)
            answer.speech_complete = done is not None and not done.interrupted and not answer.text_only
            return np.concatenate(answer.chunks) if answer.chunks else None

    def cut_to_heard(self, answer: Answer, kept_text: str, heard_seconds: float) -> None:
        with self:
            answer.message["content"] = kept_text.rstrip() + " …"
            answer.message["metadata"] = {"title": f"✋ Interrupted after {heard_seconds:.1f} s"}

    def drop_clip(self, answer: Answer) -> None:
        with self:
            self.chat = [m for m in self.chat if m.get("content") != {"path": str(answer.clip)}]

    def finish_answer(self, answer: Answer, timeout_s: float) -> None:
        with self:
            if answer.retracted:
                answer.finished = True
                return
            if answer.clip is not None and any(m is answer.message for m in self.chat):  # not cleared since
                self.chat.append({"role": "assistant", "content": {"path": str(answer.clip)}})
            if answer.timed_out:
                self.chat.append({"role": "assistant", "metadata": {"title": "⏱️ Stopped"},
                                  "content": f"This answer ran past the {timeout_s:.0f} s limit for one turn and "
                                             "was stopped; what it said so far is kept."})
            answer.finished = True
