"""Speech out: the feed the page's WebAudio player reads, and the server's copy of the player's clock.

`gr.Audio(streaming=True)` plays 1.2-1.35 s after the first yield (an HLS encoder per stream); a `gr.HTML`
component with its own script plays a yielded chunk 50-100 ms after it arrives. Its value is the answer's
feed: an append-only text, one line per event, so Gradio sends each yield as a small "append" diff and the
script never misses a chunk even when two updates reach it in one tick:

    answer 7                   a new answer (the script resets when the id changes)
    pcm UklGRi...              24 kHz mono int16 little-endian, base64
    stop                       stop playing now (barge-in, Stop button)
    end                        the answer's audio is complete

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


class PlayerFeed:
    """One answer's feed for the player component."""

    def __init__(self, answer_id: int):
        self.answer_id = answer_id
        self.text = f"answer {answer_id}\n"
        self.stopped = False

    def add(self, samples: np.ndarray) -> None:
        if not self.stopped:
            self.text += "pcm " + base64.b64encode(pcm16(samples)).decode("ascii") + "\n"

    def stop(self) -> None:
        if not self.stopped:
            self.text += "stop\n"
            self.stopped = True

    def end(self) -> None:
        if not self.stopped:
            self.text += "end\n"


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
