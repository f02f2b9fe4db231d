"""The assistant's own speech taken back out of the microphone: echo cancellation on the server.

On a laptop without headphones the microphone hears the answer playing, and a live demo with barge-in would
take that echo for the user cutting in. The page plays speech through its own WebAudio player, not a WebRTC
track, so the browser's echo canceller cannot be counted on to know what was played. The server does know:
every chunk it sent, and, from its copy of the player's clock (playout.PlaybackClock), when each one plays.
That is the far end (the reference) of WebRTC's echo canceller (AEC3, through LiveKit's
`AudioProcessingModule`), run on the microphone stream before anything listens to it:

    microphone, 16 kHz ---------------------> EchoCanceller.clean --> turn-taking, barge-in, the model
    answer chunks + their play times -> FarEnd ---^ (what played when those samples were captured)

Alignment: the microphone's sample clock is mapped to `time.monotonic()` by its chunks' arrivals (MicClock),
and the far end for those samples is what the clock says played then. What remains, the way from server to
speaker, through the room and back, is a delay of 0.1-0.5 s that AEC3's own delay estimator finds (told 0
or told the true delay, it cancelled the same in the measurements: docs/echo.md).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from model import constants as C
from omni_demo.capture import MicResampler

FRAME = C.INPUT_SAMPLE_RATE // 100  # 10 ms: the frame WebRTC's audio processing takes
# How long after the far end was last heard its echo may still reach the microphone (the way there and back,
# up to 0.5 s, and a room's reverberation). Past it the microphone goes on untouched: the canceller (its
# high-pass filter, its suppressor still learning the room) changes nothing the user says when nothing plays.
ECHO_TAIL_SECONDS = 1.0
FAR_END_ACTIVE = 1e-4  # a 10 ms frame of the far end above this RMS counts as sound
# Headphones: while WebRTC's canceller has not found an echo it holds back whatever the microphone hears as
# the far end plays (measured: the user's voice -8 dB 2 s into the first answer, none from 12 s on), so with
# no echo to remove it only makes a cut-in late. The microphone is taken as it is once this much of the far
# end has played without its echo: the loudness of the two, 10 ms by 10 ms, never follow each other at any
# delay up to MAX_DELAY_SECONDS (correlation under NO_ECHO_CORRELATION). Once an echo was found, it stays.
NO_ECHO_AFTER_SECONDS = 1.5
MAX_DELAY_SECONDS = 0.6
# The best of 61 lags over 1.5 s of frames: with no echo (the test voice against -45 dB noise, 300 draws) it
# reached 0.29 (99th percentile 0.26), too near 0.3, the former threshold (a run with headphones took noise for
# an echo); with an echo 0.25 s late it was at least 0.72 at -20 dB, 0.83 at -10 dB, 0.92 at 0 dB.
NO_ECHO_CORRELATION = 0.5
HISTORY_SECONDS = 30.0  # what the judgement looks back over, at most
# While AEC3 learns the room (no judgement yet, and an echo can be in the microphone), a turn needs this much
# voice to be confirmed instead of turn-taking's 0.3 s. From a short first burst of speech and a pause (a
# server that slows down after a fast start) AEC3 learns the room wrong, and lets the next burst's echo
# through at 2-10 dB below itself for up to half a second: Silero took that for the user (docs/echo.md).
LEARNING_MIN_SPEECH_SECONDS = 1.0
# A microphone that was off (recording paused) starts its clock afresh: its chunks come more than MIC_GAP_SECONDS
# late, and then keep coming at the pace they are captured. A stream that only stalled (a network hiccup, a GC
# pause, a loaded machine) also comes late, then catches up: its chunks come faster than they are captured,
# however slowly, so the lateness keeps falling. Its clock must not move, or the chunks of the catch-up are
# placed a second or more after what played as they were captured, and the canceller and the echo detector
# compare the microphone with the wrong far end (CI runs on a loaded machine took the echo for the user so).
# So the clock starts afresh only once the lateness has stopped falling (by MIC_CATCH_UP_SECONDS) for
# MIC_RESUMED_SECONDS.
MIC_GAP_SECONDS = 1.0
MIC_RESUMED_SECONDS = 0.5
MIC_CATCH_UP_SECONDS = 0.02


class MicClock:
    """When the microphone's samples were captured, on `time.monotonic()`: the earliest time consistent with
    every chunk's arrival, so a chunk that was late on the network does not move it."""

    def __init__(self, rate: int = C.INPUT_SAMPLE_RATE):
        self.rate = rate
        self.samples = 0
        self._origin: float | None = None  # when sample 0 was captured
        # Chunks more than MIC_GAP_SECONDS late: the lowest origin they give, that origin when it last fell by
        # MIC_CATCH_UP_SECONDS, and when that was. Pending until the microphone is known to have resumed.
        self._late: tuple[float, float, float] | None = None

    @property
    def settled(self) -> bool:
        """False while late chunks are placed on an origin that may be about to change."""
        return self._late is None

    def place(self, count: int, arrived: float) -> float:
        """`count` new samples arrived at `arrived`: when the first of them was captured."""
        first = self.samples
        self.samples += count
        origin = arrived - self.samples / self.rate
        if self._origin is None or origin < self._origin:
            self._origin, self._late = origin, None
        elif origin - self._origin <= MIC_GAP_SECONDS:
            self._late = None  # back in step: it had only stalled
        elif self._late is None or origin - self._late[0] > MIC_GAP_SECONDS:  # (off again before it was known)
            self._late = (origin, origin, arrived)
        else:
            lowest, fell_to, since = self._late
            lowest = min(lowest, origin)
            if lowest < fell_to - MIC_CATCH_UP_SECONDS:  # still catching up
                self._late = (lowest, lowest, arrived)
            elif arrived - since >= MIC_RESUMED_SECONDS:  # at the pace it captures: resumed after a pause
                self._origin, self._late = lowest, None
            else:
                self._late = (lowest, fell_to, since)
        return self._origin + first / self.rate


@dataclass(frozen=True)
class Played:
    """The answer being played, as of one moment: its chunks (24 kHz) and when each starts and stops."""

    answer: object  # which answer (identity only)
    chunks: list[np.ndarray]
    starts: list[float]  # time.monotonic() of each chunk's start; inf: held, not playing yet
    stopped_at: float | None


class FarEnd:
    """What the tab's player plays, at 16 kHz on `time.monotonic()`: the chunks of the current answer, each
    from when the clock says it starts, until the answer is stopped."""

    def __init__(self):
        self._played: Played | None = None
        self._begin(None)

    def _begin(self, answer: object | None) -> None:
        self._answer = answer
        self._resampler = MicResampler()
        self._audio = np.zeros(0, np.float32)  # the answer's speech so far, resampled as one stream
        self._offsets: list[int] = []  # where each chunk starts in it
        self._seconds = 0.0  # of the chunks taken

    def update(self, played: Played | None) -> None:
        self._played = played
        if played is None:
            return
        if played.answer is not self._answer:
            self._begin(played.answer)
        new = played.chunks[len(self._offsets) :]
        for chunk in new:
            self._offsets.append(round(self._seconds * C.INPUT_SAMPLE_RATE))
            self._seconds += len(chunk) / C.OUTPUT_SAMPLE_RATE
        if new:
            more = self._resampler(C.OUTPUT_SAMPLE_RATE, np.concatenate(new))
            self._audio = np.concatenate([self._audio, more])

    def between(self, start: float, count: int) -> np.ndarray:
        """The `count` samples played from `start` on (zeros where nothing plays)."""
        out = np.zeros(count, np.float32)
        played, rate = self._played, C.INPUT_SAMPLE_RATE
        if played is None:
            return out
        end = start + count / rate
        stop = played.stopped_at if played.stopped_at is not None else math.inf
        bounds = self._offsets + [round(self._seconds * rate)]
        for index, chunk_start in enumerate(played.starts[: len(self._offsets)]):
            length = bounds[index + 1] - bounds[index]
            chunk_end = min(chunk_start + length / rate, stop)
            if not math.isfinite(chunk_start) or chunk_end <= start or chunk_start >= end:
                continue
            first = max(0, round((start - chunk_start) * rate))  # within the chunk
            last = min(length, round((min(end, chunk_end) - chunk_start) * rate))
            at = max(0, round((chunk_start - start) * rate))  # within `out`
            source = self._audio[bounds[index] + first : bounds[index] + last]
            out[at : at + len(source)] = source[: count - at]
        return out


class EchoDetector:
    """Whether the microphone hears the far end at all, from the loudness of both, 10 ms by 10 ms."""

    def __init__(self):
        self.found: bool | None = None  # None: not known yet
        frames = round(HISTORY_SECONDS * 100)
        self._far: deque[float] = deque(maxlen=frames)  # dB, every frame, until an echo is found
        self._mic: deque[float] = deque(maxlen=frames)

    def add(self, far: np.ndarray, mic: np.ndarray, aligned: bool = True) -> None:
        """One 10 ms frame. A frame whose far end is not surely the one played as the microphone captured it
        keeps its place unjudged: leaving it out would set what played before it against what the
        microphone heard after it, as if that were its echo (a microphone stall judged an echo "none" so)."""
        if self.found:  # it stays found: nothing more to judge
            return
        self._far.append(_db(far) if aligned else math.nan)
        self._mic.append(_db(mic) if aligned else math.nan)

    def judge(self) -> None:
        if self.found:
            return
        lags = round(MAX_DELAY_SECONDS * 100)
        far, mic = np.array(self._far), np.array(self._mic)
        active = np.flatnonzero(far[: len(far) - lags] > 20 * np.log10(FAR_END_ACTIVE))
        if len(active) < NO_ECHO_AFTER_SECONDS * 100:
            return
        best = max(_correlation(far[active], mic[active + lag]) for lag in range(lags + 1))
        self.found = best >= NO_ECHO_CORRELATION
        if not self.found:  # keep judging on what plays next; the frames judged are let go
            for _ in range(len(far) - lags):
                self._far.popleft()
                self._mic.popleft()


def _db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(samples.astype(np.float64) ** 2) + 1e-12))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    known = np.isfinite(a) & np.isfinite(b)  # pairs with an unaligned frame are not judged
    a, b = a[known], b[known]
    if len(a) < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float(np.dot(a, b) / (np.sqrt(np.dot(a, a) * np.dot(b, b)) + 1e-12))


class EchoCanceller:
    """One microphone stream's echo canceller. `clean` takes the 16 kHz samples as they arrive and returns
    them with the assistant's speech removed, 10 ms frames at a time (a partial frame waits for the next
    chunk); while nothing has played for ECHO_TAIL_SECONDS, the samples themselves."""

    def __init__(self):
        from livekit import (
            rtc,  # its native library loads here, not when the app's modules are imported
        )

        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self.clock = MicClock()
        self.far_end = FarEnd()
        self._mic = np.zeros(0, np.float32)  # samples of a partial frame, and what played as they came
        self._far = np.zeros(0, np.float32)
        self._frames = 0  # 10 ms frames processed
        self._echo_until = 0  # the frame from which no echo can come any more
        self.detector = EchoDetector()

    def clean(self, audio: np.ndarray, arrived: float, played: Played | None) -> np.ndarray:
        """`audio` arrived at `arrived` (time.monotonic()); `played`: the answer the page is playing."""
        start = self.clock.place(len(audio), arrived)
        settled = self.clock.settled
        self.far_end.update(played)
        mic = np.concatenate([self._mic, audio])
        far = np.concatenate([self._far, self.far_end.between(start, len(audio))])
        whole = len(mic) // FRAME * FRAME
        self._mic, self._far = mic[whole:], far[whole:]
        out = mic[:whole].copy()
        tail = round(ECHO_TAIL_SECONDS * 100)
        for at in range(0, whole, FRAME):
            played = far[at : at + FRAME]
            if np.sqrt(np.mean(played**2)) > FAR_END_ACTIVE:
                self._echo_until = self._frames + tail
            # The canceller hears everything, so that it knows the room whenever an answer plays.
            self._apm.process_reverse_stream(self._frame(played))
            self._apm.set_stream_delay_ms(0)  # AEC3 finds the delay itself (module docstring)
            self.detector.add(played, mic[at : at + FRAME], aligned=settled)
            frame = self._frame(mic[at : at + FRAME])
            self._apm.process_stream(frame)  # in place
            if self._frames < self._echo_until and self.detector.found is not False:
                out[at : at + FRAME] = np.frombuffer(frame.data, np.int16) / 32768.0
            self._frames += 1
        self.detector.judge()
        return out

    @property
    def min_speech_seconds(self) -> float | None:
        """The voice a turn needs to be confirmed in what `clean` returned last (None: turn-taking's own)."""
        learning = self.detector.found is None and self._frames < self._echo_until
        return LEARNING_MIN_SPEECH_SECONDS if learning else None

    def _frame(self, samples: np.ndarray):
        pcm = bytearray((np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16).tobytes())
        return self._rtc.AudioFrame(pcm, C.INPUT_SAMPLE_RATE, 1, FRAME)
