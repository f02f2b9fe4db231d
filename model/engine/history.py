"""A conversation as it was given, turn by turn: enough to rebuild the caches anywhere, and the trim policy.

Each record holds a turn's content and the rope ids it used (`span`). A live turn is kept in its canonical
form (the sound as the prompt holds it, the pictures on the 2 fps grid), so replaying it rebuilds exactly
the cache the live turn built, token for token, however the live turn had arrived. Records are plain
picklable data: a ZeroGPU call gets them in and hands them back out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model import constants as C
from model.inputs.conversation import Part


@dataclass
class UserTurn:
    """A turn given whole: typed text and uploaded files."""

    parts: list[Part]
    span: int = 0


@dataclass
class LiveTurn:
    """A turn spoken and shown live."""

    audio: np.ndarray  # 16 kHz mono float32
    frames: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (RGB frame, seconds into the turn)
    span: int = 0

    @property
    def seconds(self) -> float:
        """Seconds of media to encode: its sound, and as much again for its pictures (if any)."""
        if not len(self.audio):
            return self.frames[-1][1] + 1 / C.VIDEO_FPS if self.frames else 0.0
        return len(self.audio) / C.INPUT_SAMPLE_RATE * (2 if self.frames else 1)


@dataclass
class AnswerTurn:
    """The assistant's answer, as the token ids it chose (cut to what the user heard, if they cut in)."""

    tokens: list[int]
    span: int = 0


Record = UserTurn | LiveTurn | AnswerTurn


def first_kept(records: list[Record], budget: int, keep_last: int) -> int:
    """Where a conversation trimmed to `budget` rope ids starts: the oldest exchanges go first, an answer with
    its question, and the last `keep_last` records always stay."""
    first = 0
    while first < len(records) - keep_last and sum(r.span for r in records[first:]) > budget:
        first += 1
        while first < len(records) - keep_last and isinstance(records[first], AnswerTurn):
            first += 1
    return first


def user_turns(records: list[Record]) -> int:
    return sum(not isinstance(r, AnswerTurn) for r in records)


def media_seconds(records: list[Record]) -> float:
    """Seconds of sound and pictures to encode when the records are replayed."""
    total = 0.0
    for record in records:
        if isinstance(record, LiveTurn):
            total += record.seconds
        elif isinstance(record, UserTurn):
            total += sum(getattr(p, "seconds", 0.0) for p in record.parts)
    return total
