"""Speech out: the feed the page's WebAudio player reads, and the player's script.

`gr.Audio(streaming=True)` plays 1.2-1.35 s after the first yield (an HLS encoder per stream); a `gr.HTML`
component with its own script plays a yielded chunk 50-100 ms after it arrives. Its value is the answer's
feed, one numbered line per event:

    answer 7 pace 0.41 5.12    the header: a new answer (the script resets when the id changes), and the
                               pace of the last answers (speech made per second, seconds per answer), if any
    0 pcm 0 UklGRi...          made 0 ms after the answer's first chunk; 24 kHz mono int16 little-endian,
                               base64
    1 stop                     stop playing now (barge-in, Stop button)
    2 end                      the answer's audio is complete

The value holds only the last lines (between `FEED_LINES` and twice that), so what one update costs the
server, the wire and the script does not grow with the answer. Between two trims the value only grows, so
Gradio sends each update as a small "append" diff. Two updates may reach the script in one tick and it then
sees only the second; the line numbers let it take every line it has not taken yet, and the lines the value
keeps cover any updates one tick can bring.

When each chunk plays is the playout rule's (omni_demo/playout.py), which the script implements too.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from model import constants as C
from omni_demo import playout
from omni_demo.playout import Pace

PLAYER_SCRIPT = Path(__file__).with_name("player.js")


def player_script() -> str:
    """The player's script, after the playout rule's numbers (one source for them: playout.py)."""
    rule = {"lead": playout.LEAD_SECONDS, "safety": playout.SAFETY, "maxHold": playout.MAX_HOLD_SECONDS,
            "defaultAnswer": playout.DEFAULT_ANSWER_SECONDS}
    return f"const RULE = {json.dumps(rule)};\n" + PLAYER_SCRIPT.read_text()


def pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> int16 little-endian bytes (the model's own levels, no normalising)."""
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


FEED_LINES = 12  # lines the feed keeps at least: 12 chunks are several seconds of speech


class PlayerFeed:
    """One answer's feed for the player component."""

    def __init__(self, answer_id: int, pace: Pace | None = None):
        self.answer_id = answer_id
        self.pace = pace
        self.lines = 0  # lines written so far
        self._kept: list[str] = []  # the last lines, numbered
        self.stopped = False

    def value(self) -> str:
        pace = "" if self.pace is None else f" pace {self.pace.rate:.4f} {self.pace.length:.3f}"
        return f"answer {self.answer_id}{pace}\n" + "".join(self._kept)

    def add(self, samples: np.ndarray, made: float) -> None:
        """A chunk, made `made` seconds after the answer's first (the page measures the pace on these)."""
        if not self.stopped:
            self._write(f"pcm {round(made * 1000)} " + base64.b64encode(pcm16(samples)).decode("ascii"))

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


def samples_seconds(samples: np.ndarray) -> float:
    return len(samples) / C.OUTPUT_SAMPLE_RATE
