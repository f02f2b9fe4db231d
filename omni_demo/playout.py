"""When an answer's speech plays: the page's playout rule, and the server's copy of it.

Speech is made in chunks at whatever pace the machine allows. A GPU makes it faster than it plays, so each
chunk can play as it comes. A slower machine makes it slower than it plays, and a player that starts each
chunk as it comes stutters: a chunk, a gap, a chunk. So the player holds the start of the speech just long
enough that, at the pace measured, it will not run dry:

* A chunk that comes while speech is playing is scheduled right after it, with no gap.
* A chunk that finds the player silent (the answer's first, or after playback ran dry) opens a *run*. The
  run starts at `S = now + to_come / rate - (to_play - last_chunk)`: by the time playback reaches the
  answer's last chunk, production will have made it.
    - `rate`: seconds of speech made per second, measured on this answer from its second chunk on, else the
      pace of the last answers; times `SAFETY` (production slows down now and then). It is measured on when
      the server *made* each chunk (the feed says so, in milliseconds after the first), not on when the page
      got it: two chunks that reach the page together were not made in no time.
    - `to_come`: speech still to be made, `to_play`: speech from the run's start to the end, both from the
      expected length of the answer: the longest of the last answers', or twice what has come once it is
      longer than that.
  At a rate of 1 or more the run starts at once. With no measure at all (the server's first answer) it waits
  for the second chunk. The answer's end starts a held run at once; no run is held over `MAX_HOLD_SECONDS`.
* Each chunk that comes while a run is held plans its start again, with the newer measure.

`player.js` implements the rule in the page. `PlaybackClock` replays it on the server from the times the
chunks were sent, so the session knows what the user has heard when they cut in, without a round trip to the
browser, and the figures can say when the first audio played and how often playback ran dry.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

LEAD_SECONDS = 0.05  # a run starts at least this long after its chunk arrives (the page's scheduling margin)
SAFETY = 0.85  # the rate is taken this much lower than measured
# A bound for a pace misjudged, not for a slow machine: speech made at a fifth of real time needs 4 s of hold
# per second of answer, and a gap-free start is worth the wait.
MAX_HOLD_SECONDS = 30.0
DEFAULT_ANSWER_SECONDS = 6.0  # the expected length of an answer's speech before any answer was measured
PACE_ANSWERS = 3  # the last answers the pace is taken from


@dataclass(frozen=True)
class Pace:
    """How fast speech was made lately, and how long answers were: the rule's prior, sent to the page."""

    rate: float  # seconds of speech per second of production
    length: float  # seconds of speech in the longest of the last answers


class SpeechPace:
    """The pace of the last answers of this server (every tab: they share the model)."""

    def __init__(self, answers: int = PACE_ANSWERS):
        self._rates: deque[float] = deque(maxlen=answers)
        self._lengths: deque[float] = deque(maxlen=answers)
        self._lock = threading.Lock()

    def current(self) -> Pace | None:
        with self._lock:
            if not self._rates:
                return None
            # The longest of the last answers: a shorter one only starts when it ends (the end starts a held
            # run), a longer one than expected would run dry.
            length = max(self._lengths, default=DEFAULT_ANSWER_SECONDS)
            # Rounded as the page's feed gives them, so the page and the server plan with the same numbers.
            return Pace(round(sum(self._rates) / len(self._rates), 4), round(length, 3))

    def record(self, clock: PlaybackClock, complete: bool) -> None:
        """An answer's speech has all been made (`complete`: not cut short, so its length counts too)."""
        rate = clock.measured_rate()
        with self._lock:
            if rate is not None:
                self._rates.append(rate)
            if complete and clock.produced > 0:
                self._lengths.append(clock.produced)


def run_start(now: float, run_arrival: float, played: float, produced: float, last_chunk: float,
              rate: float | None, expected: float) -> float:
    """When a held run starts, planned at `now` (see the module's docstring; `played`: the seconds of this
    answer scheduled before the run, `produced`: all seconds that have come)."""
    at_once = max(now, run_arrival) + LEAD_SECONDS  # a held run never starts in the past
    if rate is None:
        return math.inf  # wait for a measure
    if rate >= 1.0:
        return at_once
    if produced + last_chunk > expected:  # longer than the answers before: expect it to go on as long again
        expected = 2 * produced
    to_come, to_play = expected - produced, expected - played
    planned = now + to_come / (rate * SAFETY) - (to_play - last_chunk)
    return max(at_once, min(planned, run_arrival + LEAD_SECONDS + MAX_HOLD_SECONDS))


class PlaybackClock:
    """When each chunk of one answer plays, by the rule; times are `time.monotonic()` seconds."""

    def __init__(self, pace: Pace | None = None):
        self.pace = pace
        self.chunks: list[float] = []  # each chunk's seconds, in order
        self.starts: list[float] = []  # when each starts; a held run's move until it starts (inf: unknown yet)
        self.runs: list[int] = []  # the index of each run's first chunk
        self.run_arrival = 0.0  # when the last run's first chunk came
        self.first_arrival: float | None = None
        self.made: list[float] = []  # when each chunk was made: seconds after the first, to the millisecond
        self.produced = 0.0
        self.stopped_at: float | None = None

    # ------------------------------------------------------------------ what happens

    def add(self, seconds: float, arrived: float | None = None) -> float:
        """A chunk made (on the server: it is made as it arrives). Returns when it was made, as the feed
        tells the page."""
        now = time.monotonic() if arrived is None else arrived
        if self.first_arrival is None:
            self.first_arrival = now
        made = round(now - self.first_arrival, 3)
        self.made.append(made)
        self.produced += seconds
        end = self._end()
        self.chunks.append(seconds)
        if self.runs and self.starts[self.runs[-1]] <= now and end >= now + LEAD_SECONDS:
            self.starts.append(end)  # playing: straight after
            return made
        if not self.runs or self.starts[self.runs[-1]] <= now:  # silent: a new run
            self.runs.append(len(self.chunks) - 1)
            self.run_arrival = now
        self.starts.append(math.inf)
        self._place(self._planned(now, seconds))
        return made

    def end(self, at: float | None = None) -> None:
        """All of the answer's speech has come: a run still held starts now."""
        now = time.monotonic() if at is None else at
        if self.runs and self.starts[self.runs[-1]] > now + LEAD_SECONDS:
            self._place(now + LEAD_SECONDS)

    def stop(self, at: float | None = None) -> float:
        """Stops playback; returns the seconds heard."""
        self.stopped_at = time.monotonic() if at is None else at
        return self.heard(self.stopped_at)

    # ------------------------------------------------------------------ what it means

    def heard(self, at: float | None = None) -> float:
        at = time.monotonic() if at is None else at
        if self.stopped_at is not None:
            at = min(at, self.stopped_at)
        return sum(min(max(at - start, 0.0), seconds) for start, seconds in zip(self.starts, self.chunks))

    def playing_until(self) -> float:
        """When the last scheduled sample ends: inf while a run waits for a measure, 0 with nothing to play
        or once stopped."""
        if self.stopped_at is not None or not self.chunks:
            return 0.0
        return self._end()

    @property
    def first_start(self) -> float | None:
        """When the answer's speech started (or will: its runs are all planned once the answer has ended)."""
        return self.starts[0] if self.starts and math.isfinite(self.starts[0]) else None

    def underruns(self) -> list[float]:
        """Each time playback ran dry within the answer: for how long."""
        return [self.starts[first] - self.starts[first - 1] - self.chunks[first - 1] for first in self.runs[1:]]

    def measured_rate(self) -> float | None:
        """Seconds of speech made per second after the first chunk was made (from the second chunk on)."""
        if len(self.chunks) < 2 or self.made[-1] <= 0:
            return None
        return (self.produced - self.chunks[0]) / self.made[-1]

    # ------------------------------------------------------------------ the rule

    def _end(self) -> float:
        return self.starts[-1] + self.chunks[-1] if self.chunks else -math.inf

    def _planned(self, now: float, last_chunk: float) -> float:
        rate = self.measured_rate()
        if rate is None and self.pace is not None:
            rate = self.pace.rate
        expected = self.pace.length if self.pace is not None else DEFAULT_ANSWER_SECONDS
        played = sum(self.chunks[: self.runs[-1]])
        return run_start(now, self.run_arrival, played, self.produced, last_chunk, rate, expected)

    def _place(self, start: float) -> None:
        """The held run's chunks, back to back from `start`."""
        for index in range(self.runs[-1], len(self.chunks)):
            self.starts[index] = start
            start += self.chunks[index]
