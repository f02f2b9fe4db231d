"""Speech out: the feed the page's WebAudio player reads, and the server's copy of the player's clock.

`gr.Audio(streaming=True)` plays 1.2-1.35 s after the first yield (an HLS encoder per stream); a `gr.HTML`
component with its own script plays a yielded chunk 50-100 ms after it arrives. Its value is the answer's
feed, one numbered line per event:

    answer 7                   the header: a new answer (the script resets when the id changes)
    0 pcm UklGRi...            24 kHz mono int16 little-endian, base64
    1 stop                     stop playing now (barge-in, Stop button)
    2 end                      the answer's audio is complete

The value holds only the last lines (between `FEED_LINES` and twice that), so what one update costs the
server, the wire and the script does not grow with the answer. Between two trims the value only grows, so
Gradio sends each update as a small "append" diff. Two updates may reach the script in one tick and it then
sees only the second; the line numbers let it take every line it has not taken yet, and the lines the value
keeps cover any updates one tick can bring.

The player schedules each chunk at max(arrival + lead, end of the previous chunk), gap-free.
`PlaybackClock` replays that rule on the server, so the session knows how much the user has heard when
they cut in, without a round trip to the browser.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np

from model import constants as C

PLAYER_SCRIPT = Path(__file__).with_name("player.js")
PLAYER_LEAD_SECONDS = 0.05  # the script starts an idle player this long after a chunk arrives


def pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> int16 little-endian bytes (the model's own levels, no normalising)."""
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


FEED_LINES = 12  # lines the feed keeps at least: 12 chunks are several seconds of speech


class PlayerFeed:
    """One answer's feed for the player component."""

    def __init__(self, answer_id: int):
        self.answer_id = answer_id
        self.lines = 0  # lines written so far
        self._kept: list[str] = []  # the last lines, numbered
        self.stopped = False

    def value(self) -> str:
        return f"answer {self.answer_id}\n" + "".join(self._kept)

    def add(self, samples: np.ndarray) -> None:
        if not self.stopped:
            self._write("pcm " + base64.b64encode(pcm16(samples)).decode("ascii"))

    def stop(self) -> None:
        if not self.stopped:
            self._write("stop")
            self.stopped = True

    def end(self) -> None:
        if not self.stopped:
            self._write("end")

    def _write(self, line: str) -> None:
        self._kept.append(f"{self.lines} {line}\n")
        self.lines += 1
        if len(self._kept) > 2 * FEED_LINES:
            del self._kept[:-FEED_LINES]


class PlaybackClock:
    """When each chunk of one answer plays, by the player's rule; times are `time.monotonic()` seconds."""

    def __init__(self, lead: float = PLAYER_LEAD_SECONDS):
        self.lead = lead
        self.spans: list[tuple[float, float]] = []  # (start, end) of each chunk
        self.stopped_at: float | None = None

    def add(self, seconds: float, arrived: float | None = None) -> None:
        arrived = time.monotonic() if arrived is None else arrived
        start = max(arrived + self.lead, self.spans[-1][1] if self.spans else 0.0)
        self.spans.append((start, start + seconds))

    def stop(self, at: float | None = None) -> float:
        """Stops playback; returns the seconds heard."""
        self.stopped_at = time.monotonic() if at is None else at
        return self.heard(self.stopped_at)

    def heard(self, at: float | None = None) -> float:
        at = time.monotonic() if at is None else at
        if self.stopped_at is not None:
            at = min(at, self.stopped_at)
        return sum(min(max(at - start, 0.0), end - start) for start, end in self.spans)

    @property
    def total(self) -> float:
        return sum(end - start for start, end in self.spans)

    def playing_until(self) -> float:
        """When the last scheduled sample ends (0 if nothing is scheduled or playback was stopped)."""
        if self.stopped_at is not None or not self.spans:
            return 0.0
        return self.spans[-1][1]


def samples_seconds(samples: np.ndarray) -> float:
    return len(samples) / C.OUTPUT_SAMPLE_RATE
