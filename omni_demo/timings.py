"""Per-turn timings as the user lives them, and the timeline chart of the last turns.

Every figure counts from the end of the user's turn (the moment turn-taking decided they had finished, or
the moment a typed message was sent), so queueing, the open windows' encoding and prefill all count. A
voice turn also knows when the speech itself ended: the silence that closes a turn comes before that.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass

import pandas as pd

CHART_TURNS = 6  # turns shown in the timeline
# A real-time factor over less speech than this says more about start-up than about speed (an answer
# stopped after 0.04 s of speech showed 112): none is given.
MIN_RTF_AUDIO_SECONDS = 1.0
BUFFERED_SECONDS = 0.1  # a first audio played later than made by more than this was held by the player


@dataclass
class TurnTiming:
    index: int
    kind: str  # "voice" or "typed"
    turn_end_wall: float  # time.time() when the turn closed
    speech_end_wall: float | None = None  # time.time() when the user's voice stopped (voice turns)
    first_text: float | None = None  # seconds from the turn's end
    first_audio: float | None = None  # the first speech made
    first_audio_played: float | None = None  # when the page's player started it (omni_demo/playout.py)
    underruns: int = 0  # times playback ran dry after it started
    underrun_seconds: float = 0.0
    total: float | None = None
    audio_seconds: float = 0.0
    interrupted: bool = False
    prepared: float = 0.0  # seconds the answer was being made in the user's pause before their turn ended

    @property
    def silence(self) -> float:
        """The pause that ended the turn: between the end of speech and the end of the turn."""
        return 0.0 if self.speech_end_wall is None else self.turn_end_wall - self.speech_end_wall

    @property
    def real_time_factor(self) -> float | None:
        """Seconds of compute per second of speech, over the whole answer (none for under a second of it)."""
        if self.audio_seconds < MIN_RTF_AUDIO_SECONDS or self.total is None:
            return None
        return self.total / self.audio_seconds


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def log_line(tab: str, timing: TurnTiming, tokens: int) -> str:
    """One line per answer for the server's console."""
    rtf = timing.real_time_factor
    return (f"tab {tab[:8]} {timing.kind} turn {timing.index}: first text {_seconds(timing.first_text)}, "
            f"first audio played {_seconds(timing.first_audio_played)}, underruns {timing.underruns}, "
            f"RTF {'–' if rtf is None else f'{rtf:.2f}'}, {tokens} tokens"
            + (f", prepared {_seconds(timing.prepared)} before the turn ended" if timing.prepared else "")
            + (", interrupted" if timing.interrupted else ""))


def summary(timing: TurnTiming) -> str:
    """One line of Markdown for the last turn."""
    rtf = timing.real_time_factor
    parts = [
        f"first text **{_seconds(timing.first_text)}**",
        f"first audio **{_seconds(timing.first_audio)}**",
    ]
    played = timing.first_audio_played
    if played is not None and timing.first_audio is not None and played - timing.first_audio > BUFFERED_SECONDS:
        parts.append(f"played from **{_seconds(played)}** (held so that it plays without gaps)")
    if timing.underruns:
        parts.append(f"playback ran dry {timing.underruns}× ({_seconds(timing.underrun_seconds)})")
    parts += [f"real-time factor **{'–' if rtf is None else f'{rtf:.2f}'}**", f"answer {_seconds(timing.total)}"]
    if timing.prepared:
        parts.append(f"made from **{_seconds(timing.prepared)}** before your turn ended (in your pause)")
    since = "after your turn ended"
    if timing.speech_end_wall is not None:
        since += f" ({_seconds(timing.silence)} of silence after your voice)"
    return f"Turn {timing.index}: " + ", ".join(parts) + f", {since}."


# The timeline's stages, in the order they happen (bottom to top of each bar), and their colours.
STAGES = {
    "your pause": "#cbd5e1",
    "your pause, the answer made meanwhile": "#bae6fd",
    "to first text": "#93c5fd",
    "to first audio": "#6366f1",
    "held for smooth playback": "#f59e0b",
    "speaking": "#a5b4fc",
    "rest of the text": "#86efac",  # a text-only answer
}


def stages(t: TurnTiming) -> dict[str, float]:
    """One turn as the user lived it, in seconds from the end of their voice (or of the typed message)."""
    first_text = t.first_text or 0.0
    prepared = min(t.prepared, t.silence)
    parts = {"your pause": t.silence - prepared, "your pause, the answer made meanwhile": prepared,
             "to first text": first_text}
    if t.first_audio is None:
        parts["rest of the text"] = max(0.0, (t.total or 0.0) - first_text)
        return parts
    parts["to first audio"] = max(0.0, t.first_audio - first_text)
    played = t.first_audio if t.first_audio_played is None else t.first_audio_played
    parts["held for smooth playback"] = max(0.0, played - t.first_audio)
    parts["speaking"] = t.audio_seconds + t.underrun_seconds
    return parts


def turn_label(t: TurnTiming, width: int = 1) -> str:
    """The chart orders its bars by label: numbers padded with spaces to `width` sort as numbers (the
    chart cannot be given an order: an update that names one is undone by the updates that follow it)."""
    return f"{t.index:>{width}} {t.kind}"


def chart(timings: list[TurnTiming]) -> pd.DataFrame | None:
    """The last turns' stages, for a stacked bar chart (one bar a turn); None before the first turn.

    The page's chart takes its colours' domain from the first data it draws and keeps it through later
    updates, so every turn has a row for every stage (0 s where it did not happen), and before there is a
    turn there is no data at all. The rows run from the last stage to the first: the chart stacks them in
    that order from the top."""
    shown = timings[-CHART_TURNS:]
    if not shown:
        return None
    width = max((len(str(t.index)) for t in shown), default=1)
    rows = []
    for t in shown:
        lived = stages(t)
        rows += [(turn_label(t, width), name, lived.get(name, 0.0)) for name in reversed(STAGES)]
    return pd.DataFrame(rows, columns=["turn", "stage", "seconds"])


def figures(timings: list[TurnTiming]) -> str:
    """The last turns' figures, as data on an element (for people debugging and for the tests)."""
    data = html.escape(json.dumps([dict(asdict(t), silence=t.silence) for t in timings[-CHART_TURNS:]]), quote=True)
    return f"<div id='timeline' data-turns=\"{data}\"></div>"
