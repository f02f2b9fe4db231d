"""Microphone input as the browser sends it: 48 kHz int16 chunks of real speech (espeak-ng) and silence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BROWSER_RATE = 48_000


def speech_48k() -> np.ndarray:
    """The spoken question as the browser's microphone delivers it: 48 kHz mono int16 (about 2.9 s)."""
    samples, rate = soundfile.read(ASSETS / "question_48k.wav", dtype="int16")
    assert rate == BROWSER_RATE
    return samples


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * BROWSER_RATE), np.int16)


def chunks(audio: np.ndarray, seconds: float = 0.2):
    """(rate, int16 chunk) pairs, as Gradio's streaming microphone hands them to the handler."""
    step = round(seconds * BROWSER_RATE)
    for start in range(0, len(audio), step):
        yield BROWSER_RATE, audio[start : start + step]
