"""Turn-taking: where the user's speech starts and where their turn ends, from Silero VAD, offline.

The detector reads 16 kHz audio in 32 ms windows (512 samples, what Silero takes at 16 kHz) and keeps a
sample clock, so every event says exactly where in the stream it happened:

* `SpeechStarted` when the first voiced window arrives (the turn starts `preroll_seconds` earlier, so the
  first syllable, which Silero hears a window late, is not cut);
* `SpeechConfirmed` once the turn holds `min_speech_seconds` of voice: only then is it a turn (a cough or
  a click is not) and only then may it cut into the assistant (barge-in);
* `TurnPaused` once a confirmed turn has been silent for `prepare_seconds` (shorter than the silence that
  ends it): the answer can be prepared meanwhile, and `SpeechResumed` if the voice comes back before the
  turn ends (the prepared answer is taken back);
* `TurnEnded` after `silence_seconds` without voice, or `TurnDiscarded` if it was never confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model import constants as C

WINDOW_SAMPLES = 512  # Silero's window at 16 kHz (32 ms)
SPEECH_THRESHOLD = 0.5  # Silero's default speech probability
# Hysteresis, as Silero's own iterator: once speaking, a window counts as silence only below this.
SILENCE_THRESHOLD = 0.35


@dataclass(frozen=True)
class TurnSettings:
    silence_seconds: float = 0.6  # a pause this long ends the turn
    min_speech_seconds: float = 0.3  # less voice than this is not a turn
    preroll_seconds: float = 0.3  # audio kept from before the first voiced window
    # A pause this long in a confirmed turn starts its answer, held back until the turn ends (0: never). The
    # answer's first text then waits on the pause, not on the model. The microphone's chunks come every 0.2 s
    # (ui.MIC_CHUNK_SECONDS), so the chunk that crosses 0.2 s is always two before the one that crosses the
    # default 0.6 s: the model has 0.4 s, more than the tiny model's first text takes on a 2-core CPU with
    # the camera on (0.25 s would leave it 0.2 s one time in four).
    prepare_seconds: float = 0.2

    def __post_init__(self):
        if not 0.1 <= self.silence_seconds <= 5:
            raise ValueError(f"silence_seconds must be within 0.1..5 s, got {self.silence_seconds}")
        if not 0 <= self.min_speech_seconds <= 1.5:
            raise ValueError(f"min_speech_seconds must be within 0..1.5 s, got {self.min_speech_seconds}")


@dataclass(frozen=True)
class SpeechStarted:
    turn_start: int  # sample where the turn begins (first voiced window minus the pre-roll)


@dataclass(frozen=True)
class SpeechConfirmed:
    at: int


@dataclass(frozen=True)
class TurnPaused:
    speech_end: int  # sample where the last voiced window ended
    at: int


@dataclass(frozen=True)
class SpeechResumed:
    at: int


@dataclass(frozen=True)
class TurnEnded:
    speech_end: int  # sample where the last voiced window ended
    at: int  # sample where the silence was long enough
    voiced_seconds: float
    limit_reached: bool = False  # ended by the listener at the longest turn the model can answer, not by a pause


@dataclass(frozen=True)
class TurnDiscarded:
    at: int
    voiced_seconds: float


TurnEvent = SpeechStarted | SpeechConfirmed | TurnPaused | SpeechResumed | TurnEnded | TurnDiscarded


def load_vad():
    """Silero VAD from the wheel's own files (no download)."""
    from silero_vad import load_silero_vad

    return load_silero_vad()


class TurnDetector:
    """One microphone stream's turns. `feed` takes 16 kHz mono float32 of any length."""

    def __init__(self, vad=None, settings: TurnSettings = TurnSettings()):
        self.vad = vad if vad is not None else load_vad()
        self.settings = settings
        self.samples_seen = 0  # the stream's sample clock (samples already judged)
        self._pending = np.zeros(0, np.float32)
        self._in_turn = False
        self._confirmed = False
        self._paused = False  # TurnPaused was said for the current pause
        self._voiced_samples = 0
        self._last_voiced_end = 0

    def reset(self) -> None:
        """Forget any turn in progress (the clock goes on)."""
        self._in_turn = self._confirmed = self._paused = False
        self._voiced_samples = 0

    @torch.no_grad()
    def feed(self, samples: np.ndarray, min_speech_seconds: float | None = None) -> list[TurnEvent]:
        """`min_speech_seconds`: the voice a turn needs to be confirmed while this audio is judged (None: the
        settings')."""
        needed = self.settings.min_speech_seconds if min_speech_seconds is None else min_speech_seconds
        audio = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        whole = len(audio) // WINDOW_SAMPLES * WINDOW_SAMPLES
        self._pending = audio[whole:]
        events: list[TurnEvent] = []
        for start in range(0, whole, WINDOW_SAMPLES):
            probability = float(self.vad(torch.from_numpy(audio[start : start + WINDOW_SAMPLES]), C.INPUT_SAMPLE_RATE))
            self.samples_seen += WINDOW_SAMPLES
            events += self._judge(probability, needed)
        return events

    def _judge(self, probability: float, min_speech_seconds: float) -> list[TurnEvent]:
        now, s = self.samples_seen, self.settings
        rate = C.INPUT_SAMPLE_RATE
        voiced = probability >= (SILENCE_THRESHOLD if self._in_turn else SPEECH_THRESHOLD)
        if not self._in_turn:
            if not voiced:
                return []
            self._in_turn, self._confirmed = True, False
            self._voiced_samples, self._last_voiced_end = WINDOW_SAMPLES, now
            start = max(0, now - WINDOW_SAMPLES - round(s.preroll_seconds * rate))
            events: list[TurnEvent] = [SpeechStarted(start)]
            return events + self._maybe_confirm(now, min_speech_seconds)
        if voiced:
            self._voiced_samples += WINDOW_SAMPLES
            self._last_voiced_end = now
            resumed: list[TurnEvent] = [SpeechResumed(now)] if self._paused else []
            self._paused = False
            return resumed + self._maybe_confirm(now, min_speech_seconds)
        silent = now - self._last_voiced_end
        if silent < s.silence_seconds * rate:
            if self._confirmed and not self._paused and 0 < s.prepare_seconds and silent >= s.prepare_seconds * rate:
                self._paused = True
                return [TurnPaused(self._last_voiced_end, now)]
            return []
        voiced_seconds = self._voiced_samples / rate
        confirmed = self._confirmed
        self.reset()
        if confirmed:
            return [TurnEnded(self._last_voiced_end, now, voiced_seconds)]
        return [TurnDiscarded(now, voiced_seconds)]

    def _maybe_confirm(self, now: int, min_speech_seconds: float) -> list[TurnEvent]:
        if self._confirmed or self._voiced_samples < min_speech_seconds * C.INPUT_SAMPLE_RATE:
            return []
        self._confirmed = True
        return [SpeechConfirmed(now)]
