"""Per-turn timings as the user lives them, and the small timeline chart of the last turns.

Every figure counts from the end of the user's turn (the moment turn-taking decided they had finished, or
the moment a typed message was sent), so queueing, the open windows' encoding and prefill all count. A
voice turn also knows when the speech itself ended: the silence that closes a turn comes before that.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass

from omni_demo.playback import PLAYER_LEAD_SECONDS

CHART_TURNS = 6  # turns shown in the timeline
# A real-time factor over less speech than this says more about start-up than about speed (an answer
# stopped after 0.04 s of speech showed 112): none is given.
MIN_RTF_AUDIO_SECONDS = 1.0


@dataclass
class TurnTiming:
    index: int
    kind: str  # "voice" or "typed"
    turn_end_wall: float  # time.time() when the turn closed
    speech_end_wall: float | None = None  # time.time() when the user's voice stopped (voice turns)
    first_text: float | None = None  # seconds from the turn's end
    first_audio: float | None = None
    total: float | None = None
    audio_seconds: float = 0.0
    interrupted: bool = False

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
    played = None if timing.first_audio is None else timing.first_audio + PLAYER_LEAD_SECONDS
    return (f"tab {tab[:8]} {timing.kind} turn {timing.index}: first text {_seconds(timing.first_text)}, "
            f"first audio played {_seconds(played)}, RTF {'–' if rtf is None else f'{rtf:.2f}'}, {tokens} tokens"
            + (", interrupted" if timing.interrupted else ""))


def summary(timing: TurnTiming) -> str:
    """One line of Markdown for the last turn."""
    rtf = timing.real_time_factor
    parts = [
        f"first text **{_seconds(timing.first_text)}**",
        f"first audio **{_seconds(timing.first_audio)}**",
        f"real-time factor **{'–' if rtf is None else f'{rtf:.2f}'}**",
        f"answer {_seconds(timing.total)}",
    ]
    since = "after your turn ended"
    if timing.speech_end_wall is not None:
        since += f" ({_seconds(timing.silence)} of silence after your voice)"
    return f"Turn {timing.index}: " + ", ".join(parts) + f", {since}."


def chart(timings: list[TurnTiming]) -> str:
    """HTML bars for the last turns: silence, waiting for the first text, for the first audio, the rest."""
    rows = timings[-CHART_TURNS:]
    if not rows:
        return "<div id='timeline' data-turns='[]'><em>Timings appear after the first answer.</em></div>"
    scale = max((t.silence + (t.total or 0)) for t in rows) or 1.0
    lines = []
    for t in rows:
        segments = [("silence", t.silence, "#cbd5e1")]
        first_text = t.first_text or 0.0
        first_audio = t.first_audio if t.first_audio is not None else first_text
        segments += [
            ("to first text", first_text, "#93c5fd"),
            ("to first audio", max(0.0, first_audio - first_text), "#6366f1"),
            ("rest of the answer", max(0.0, (t.total or 0) - max(first_audio, first_text)), "#a5b4fc"),
        ]
        bars = "".join(
            f"<span title='{name}: {_seconds(width)}' style='display:inline-block;height:12px;"
            f"width:{100 * width / scale:.2f}%;background:{colour}'></span>"
            for name, width, colour in segments
            if width > 0
        )
        label = f"#{t.index} {'🎙️' if t.kind == 'voice' else '⌨️'} audio {_seconds(t.first_audio)}"
        lines.append(f"<div style='display:flex;gap:8px;align-items:center'><code style='min-width:150px'>"
                     f"{html.escape(label)}</code><div style='flex:1'>{bars}</div></div>")
    data = html.escape(json.dumps([dict(asdict(t), silence=t.silence) for t in rows]), quote=True)
    legend = ("<small>grey: your pause · light blue: to first text · indigo: to first audio · "
              "lavender: rest of the answer</small>")
    return f"<div id='timeline' data-turns=\"{data}\">{''.join(lines)}{legend}</div>"
