"""Turn-taking on real speech (espeak-ng, as the browser's microphone delivers it) with Silero VAD."""

from __future__ import annotations

import numpy as np
import pytest
from speech import chunks, silence, speech_48k

from omni_demo.capture import MicResampler
from omni_demo.turns import (
    SpeechConfirmed,
    SpeechResumed,
    SpeechStarted,
    TurnDetector,
    TurnDiscarded,
    TurnEnded,
    TurnPaused,
    TurnSettings,
)

RATE = 16_000


def events_for(audio_48k: np.ndarray, settings: TurnSettings = TurnSettings()):
    detector, resample = TurnDetector(settings=settings), MicResampler()
    events = []
    for rate, chunk in chunks(audio_48k):
        events += detector.feed(resample(rate, chunk))
    return events


def speech_bounds() -> tuple[float, float]:
    """Where the voice is in the question (seconds), from its loudness."""
    speech = np.abs(speech_48k().astype(np.float32)) > 0.02 * 32768
    loud = np.flatnonzero(speech)
    return loud[0] / 48_000, loud[-1] / 48_000


def test_one_question_is_one_turn_ending_after_the_silence():
    lead = 1.0
    events = events_for(np.concatenate([silence(lead), speech_48k(), silence(2.0)]))
    kinds = [type(e) for e in events]
    # The recording has a 0.2 s gap between two words: an answer is prepared there and taken back.
    assert kinds == [SpeechStarted, SpeechConfirmed, TurnPaused, SpeechResumed, TurnPaused, TurnEnded], kinds
    started, paused, ended = events[0], events[-2], events[-1]
    assert paused.speech_end == ended.speech_end
    prepare = TurnSettings().prepare_seconds
    assert prepare <= (paused.at - paused.speech_end) / RATE < prepare + 0.04  # the answer starts here, held back
    first, last = speech_bounds()
    assert started.turn_start / RATE < lead + first  # the pre-roll reaches back before the first syllable
    assert abs(ended.speech_end / RATE - (lead + last)) < 0.25
    silence_taken = (ended.at - ended.speech_end) / RATE
    assert 0.6 <= silence_taken < 0.6 + 0.1  # the configured pause, judged window by window (32 ms)
    assert 1.5 < ended.voiced_seconds < 3.0


def test_a_pause_shorter_than_the_threshold_keeps_one_turn():
    audio = np.concatenate([silence(0.5), speech_48k(), silence(0.4), speech_48k(), silence(1.5)])
    assert [type(e) for e in events_for(audio)].count(TurnEnded) == 1


def test_two_questions_apart_are_two_turns_and_the_threshold_is_configurable():
    audio = np.concatenate([silence(0.5), speech_48k(), silence(0.9), speech_48k(), silence(1.5)])
    assert [type(e) for e in events_for(audio)].count(TurnEnded) == 2
    long_pause = TurnSettings(silence_seconds=1.2)
    assert [type(e) for e in events_for(audio, long_pause)].count(TurnEnded) == 1


def test_speech_shorter_than_the_minimum_is_not_a_turn():
    blip = speech_48k()[: int(0.25 * 48_000)]
    events = events_for(np.concatenate([silence(0.5), blip, silence(1.5)]), TurnSettings(min_speech_seconds=0.4))
    assert not any(isinstance(e, (SpeechConfirmed, TurnEnded)) for e in events)
    assert any(isinstance(e, TurnDiscarded) for e in events)


def test_silence_and_noise_floor_make_no_turn():
    quiet = (np.random.default_rng(0).normal(0, 30, 5 * 48_000)).astype(np.int16)  # -60 dBFS hiss
    assert events_for(np.concatenate([silence(2.0), quiet])) == []


def test_settings_are_checked():
    with pytest.raises(ValueError):
        TurnSettings(silence_seconds=0.0)
    with pytest.raises(ValueError):
        TurnSettings(min_speech_seconds=3.0)


def test_a_pause_says_when_an_answer_can_be_prepared_and_when_the_voice_comes_back():
    audio = np.concatenate([silence(0.5), speech_48k(), silence(0.45), speech_48k(), silence(1.5)])
    kinds = [type(e) for e in events_for(audio)]
    # Each pause of 0.2 s in the turn: paused; the voice back: resumed; the last pause ends it.
    assert kinds[:2] == [SpeechStarted, SpeechConfirmed] and kinds[-2:] == [TurnPaused, TurnEnded], kinds
    middle = kinds[2:-2]
    assert middle.count(TurnPaused) == middle.count(SpeechResumed) >= 1
    assert all(a is TurnPaused and b is SpeechResumed for a, b in zip(middle[::2], middle[1::2]))
    assert TurnPaused not in [type(e) for e in events_for(audio, TurnSettings(prepare_seconds=0))]


def test_a_cough_prepares_nothing():
    blip = speech_48k()[: int(0.25 * 48_000)]
    events = events_for(np.concatenate([silence(0.5), blip, silence(1.5)]), TurnSettings(min_speech_seconds=0.4))
    assert not any(isinstance(e, (TurnPaused, SpeechResumed)) for e in events)
