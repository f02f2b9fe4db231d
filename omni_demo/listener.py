"""A tab's ears and eyes: microphone audio and webcam frames in, the user's turns out. No model here.

    microphone (16 kHz, the assistant's echo removed: echo.py) -> TurnDetector (Silero VAD) -> turn events
    webcam frame -> camera_frame (bounded size) -> timestamped on the microphone's sample clock

A turn starts `preroll_seconds` before its first voiced window; while it is heard, its audio and the
camera's frames are collected in a `HeardTurn`, each frame timestamped by the microphone's clock, so the
turn's content is the same whatever order the two streams' handlers run in. What the model has not been
given yet is taken with `take_unsent`.

Gradio runs the microphone and camera handlers on their own threads, sometimes two chunks of one stream at
once: the listener's lock keeps them in order. It is held across the VAD (about 1 ms per 32 ms window) and
memory updates only; the model worker never takes it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from model import constants as C
from omni_demo.capture import camera_frame
from omni_demo.turns import (
    SpeechConfirmed,
    SpeechStarted,
    TurnDetector,
    TurnDiscarded,
    TurnEnded,
    TurnEvent,
    TurnSettings,
)

CAMERA_FRESH_SECONDS = 1.0  # a frame this recent shows what the camera sees as the user starts
# Microphone audio and camera frames kept from the last seconds, whatever is heard: a turn's pre-roll, and
# the pause of a turn that is continued (up to the longest grace the page offers, plus that pre-roll).
RECENT_SECONDS = 5.0


@dataclass
class HeardTurn:
    """The user's voice turn being heard: its audio from the pre-roll on, and its camera frames."""

    start: int  # stream sample where the turn begins
    audio: list[np.ndarray] = field(default_factory=list)  # 16 kHz mono float32
    samples: int = 0
    frames: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (RGB frame, seconds into the turn)
    confirmed: bool = False
    index: int | None = None  # its number on the page, once it has ended (a continued turn keeps it)
    limit_reached: bool = False  # ended at the longest turn the model can answer: it cannot be continued
    entries: list[dict] = field(default_factory=list)  # its messages in the chat, once it has ended
    sent_chunks: int = 0  # chunks and frames already taken for the model
    sent_samples: int = 0
    sent_frames: int = 0

    def add(self, samples: np.ndarray) -> None:
        self.audio.append(samples)
        self.samples += len(samples)

    def keep_sent(self) -> None:
        """The turn becomes what was given to the model (an answer prepared in its pause had it): the rest of
        the pause is dropped. Only once the turn has ended, when nothing adds to it any more."""
        self.audio, self.samples, self.frames = self.audio[: self.sent_chunks], self.sent_samples, self.frames[: self.sent_frames]

    def whole_audio(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)

    @property
    def seconds(self) -> float:
        return self.samples / C.INPUT_SAMPLE_RATE

    @property
    def end(self) -> int:
        """Stream sample where its audio ends."""
        return self.start + self.samples


@dataclass(frozen=True)
class TurnLimit:
    """The longest turn the model can still answer (model.inputs.limits.live_turn_seconds), without and with the camera."""

    voice_seconds: float
    camera_seconds: float

    def reached(self, turn: HeardTurn) -> bool:
        return turn.seconds >= (self.camera_seconds if turn.frames else self.voice_seconds)


class Listener:
    def __init__(self, vad=None, settings: TurnSettings = TurnSettings(), limit: TurnLimit | None = None):
        """`limit`: a turn that reaches it is ended there (TurnEnded with `limit_reached`), speech or not."""
        self._detector = TurnDetector(vad, settings)
        self.limit = limit
        self._recent: deque[tuple[int, np.ndarray]] = deque()  # (first sample, audio), the last RECENT_SECONDS
        self._recent_frames: deque[tuple[np.ndarray, int]] = deque()  # (frame, sample clock when it came)
        self.samples_in = 0  # the microphone stream's 16 kHz sample clock
        self.turn: HeardTurn | None = None
        self._latest_frame: tuple[np.ndarray, float] | None = None  # (frame, time.monotonic())
        self._lock = threading.Lock()

    @property
    def hearing(self) -> bool:
        return self.turn is not None

    def set_silence(self, seconds: float) -> None:
        with self._lock:
            self._detector.settings = replace(self._detector.settings, silence_seconds=seconds)

    def set_prepare(self, seconds: float) -> None:
        """The pause after which an answer is prepared (0: none, the answer starts when the turn ends)."""
        with self._lock:
            self._detector.settings = replace(self._detector.settings, prepare_seconds=seconds)

    def hear(self, audio: np.ndarray, min_speech_seconds: float | None = None) -> list[tuple[TurnEvent, HeardTurn]]:
        """Microphone audio (16 kHz mono float32); returns the turn events it caused, each with its turn.
        `min_speech_seconds`: the voice that confirms a turn in this audio, if not the settings' (the echo
        canceller's bar while it learns the room)."""
        with self._lock:
            if not len(audio):
                return []
            first = self.samples_in
            self.samples_in += len(audio)
            if self.turn is not None:
                self.turn.add(audio)
            self._recent.append((first, audio))
            keep_from = self.samples_in - RECENT_SECONDS * C.INPUT_SAMPLE_RATE
            while self._recent and self._recent[0][0] + len(self._recent[0][1]) < keep_from:
                self._recent.popleft()
            while self._recent_frames and self._recent_frames[0][1] < keep_from:
                self._recent_frames.popleft()
            events = []
            for event in self._detector.feed(audio, min_speech_seconds):
                if isinstance(event, SpeechStarted):
                    self._begin_turn(event.turn_start)
                elif isinstance(event, SpeechConfirmed) and self.turn is not None:
                    self.turn.confirmed = True
                elif isinstance(event, (TurnEnded, TurnDiscarded)) and self.turn is not None:
                    turn, self.turn = self.turn, None  # a discarded one (a cough) is never given to the model
                    events.append((event, turn))
                    continue
                if self.turn is not None:
                    events.append((event, self.turn))
            turn = self.turn
            if turn is not None and turn.confirmed and self.limit is not None and self.limit.reached(turn):
                self._detector.reset()  # speech that goes on is a new turn
                turn.limit_reached, self.turn = True, None
                events.append((TurnEnded(self.samples_in, self.samples_in, turn.seconds, limit_reached=True), turn))
            return events

    def see(self, frame: np.ndarray) -> None:
        """A webcam frame (RGB), timestamped on the microphone's clock within the turn being heard."""
        frame = camera_frame(frame)
        with self._lock:
            self._latest_frame = (frame, time.monotonic())
            self._recent_frames.append((frame, self.samples_in))
            if self.turn is not None:
                seconds = max(0.0, (self.samples_in - self.turn.start) / C.INPUT_SAMPLE_RATE)
                self.turn.frames.append((frame, seconds))

    def take_unsent(self, turn: HeardTurn, min_samples: int = 0) -> tuple[np.ndarray, list] | None:
        """What of `turn` the model has not been given (None while less than `min_samples` of audio is new).
        Joins only the chunks not yet taken."""
        with self._lock:
            if turn.samples - turn.sent_samples < min_samples:
                return None
            new = turn.audio[turn.sent_chunks :]
            audio = np.concatenate(new) if new else np.zeros(0, np.float32)
            frames = turn.frames[turn.sent_frames :]
            turn.sent_chunks, turn.sent_samples, turn.sent_frames = len(turn.audio), turn.samples, len(turn.frames)
            return audio, frames

    def continue_turn(self, previous: HeardTurn) -> bool:
        """The turn being heard goes on `previous`, which had ended: `previous` becomes the turn being heard,
        with everything heard and seen since its end (the pause too). False if that is no longer kept."""
        with self._lock:
            ended = previous.end
            if self.turn is None or not self._recent or self._recent[0][0] > ended:
                return False
            for first, audio in self._recent:
                if first + len(audio) > ended:
                    previous.add(audio[max(0, ended - first) :])
            for frame, sample in self._recent_frames:
                if sample >= ended:
                    previous.frames.append((frame, (sample - previous.start) / C.INPUT_SAMPLE_RATE))
            previous.confirmed, self.turn = True, previous
            return True

    def forget_turn(self) -> None:
        """Drops a turn in progress (typed message, cleared conversation); the clock goes on."""
        with self._lock:
            self.turn = None
            self._detector.reset()

    def close(self) -> None:
        with self._lock:
            self.turn, self._recent, self._recent_frames, self._latest_frame = None, deque(), deque(), None

    def _begin_turn(self, start: int) -> None:
        turn = HeardTurn(start)
        for first, audio in self._recent:
            if first + len(audio) > start:
                turn.add(audio[max(0, start - first) :])
        if self._latest_frame is not None and time.monotonic() - self._latest_frame[1] < CAMERA_FRESH_SECONDS:
            turn.frames.append((self._latest_frame[0], 0.0))  # what the camera shows as the user starts
        self.turn = turn
