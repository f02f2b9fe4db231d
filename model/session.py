"""The engine's public names where other tools have always imported them; the engine is model/engine/."""

from model.engine.events import AnswerDone, AnswerSettings, AudioChunk, ContextTrimmed, Event, TextDelta, Timings
from model.engine.history import AnswerTurn, LiveTurn, Record, UserTurn
from model.engine.session import OmniSession

__all__ = [
    "AnswerDone",
    "AnswerSettings",
    "AnswerTurn",
    "AudioChunk",
    "ContextTrimmed",
    "Event",
    "LiveTurn",
    "OmniSession",
    "Record",
    "TextDelta",
    "Timings",
    "UserTurn",
]
