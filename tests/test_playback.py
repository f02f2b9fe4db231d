"""The player's feed and the server's copy of its clock."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from omni_demo.playback import FEED_LINES, PlaybackClock, PlayerFeed, pcm16
from omni_demo.view import Answer, heard_tokens
from omni_demo.timings import TurnTiming


def numbered(value: str) -> list[tuple[int, str]]:
    header, *lines = value.split("\n")
    assert header.startswith("answer ") and lines[-1] == ""
    return [(int(n), rest) for n, rest in (line.split(" ", 1) for line in lines[:-1])]


def test_feed_lines_are_numbered_and_decode_to_the_samples():
    feed = PlayerFeed(3)
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0], np.float32)
    before = feed.value()
    feed.add(samples)
    assert feed.value().startswith(before)  # Gradio sends an "append" diff, never the whole text again
    (number, line), = numbered(feed.value())
    pcm = np.frombuffer(base64.b64decode(line.removeprefix("pcm ")), "<i2")
    np.testing.assert_array_equal(pcm, [0, 16384, -16384, 32767, -32768])
    feed.stop()
    feed.add(samples)  # nothing is played after a stop
    feed.end()
    assert numbered(feed.value()) == [(0, line), (1, "stop")]


def test_an_update_costs_the_same_however_long_the_answer():
    """The value the page gets on each update stays bounded, and a reader that takes lines by number loses
    none, even when it sees only every FEED_LINES-th update."""
    feed = PlayerFeed(1)
    chunk = np.zeros(2400, np.float32)  # 0.1 s of speech a line
    sizes, counts, seen, taken = [], [], [], []
    for i in range(40 * FEED_LINES):
        feed.add(chunk)
        value = feed.value()
        sizes.append(len(value))
        counts.append(value.count("\n") - 1)
        if i % FEED_LINES == FEED_LINES - 1:  # a reader that missed the updates in between
            lines = numbered(value)
            taken += [n for n, _ in lines if n >= len(taken)]
        seen.append(value)
    assert max(sizes) <= 2 * FEED_LINES * (len(numbered(seen[0])[0][1]) + 8) + 20
    assert max(counts) == 2 * FEED_LINES  # the same lines at most, at the answer's start and at its end
    assert taken == list(range(40 * FEED_LINES))


def test_clock_schedules_gap_free_and_counts_what_was_heard():
    clock = PlaybackClock(lead=0.05)
    clock.add(0.5, arrived=10.0)  # plays 10.05 .. 10.55
    clock.add(0.5, arrived=10.1)  # queued behind it: 10.55 .. 11.05
    clock.add(0.5, arrived=12.0)  # the player ran dry: 12.05 .. 12.55
    assert clock.heard(10.05) == 0.0
    assert clock.heard(10.80) == pytest.approx(0.75)
    assert clock.heard(12.30) == pytest.approx(1.25)
    assert clock.playing_until() == pytest.approx(12.55)
    assert clock.stop(at=11.0) == pytest.approx(0.95)
    assert clock.heard(20.0) == pytest.approx(0.95) and clock.playing_until() == 0.0


def answer(tokens: int, audio_seconds: float, complete: bool, text_only: bool = False) -> Answer:
    from model.session import AnswerSettings

    timing = TurnTiming(1, "voice", 0.0, audio_seconds=audio_seconds)
    result = Answer(timing, AnswerSettings(text_only=text_only), PlayerFeed(1))
    result.tokens, result.speech_complete = list(range(tokens)), complete
    return result


def test_heard_tokens():
    assert heard_tokens(answer(40, 10.0, True), 2.5) == 10  # a quarter of the speech: a quarter of the text
    assert heard_tokens(answer(40, 10.0, True), 30.0) == 40
    assert heard_tokens(answer(40, 3.0, False), 2.0) == 6  # speech unfinished: a speaking rate's worth
    assert heard_tokens(answer(40, 0.0, False, text_only=True), 0.0) == 40  # text was read, not heard
    assert pcm16(np.array([2.0], np.float32)).hex() == "ff7f"  # clipped, not wrapped


def test_no_real_time_factor_for_less_than_a_second_of_speech():
    from omni_demo.timings import summary

    stopped = TurnTiming(2, "voice", 0.0, total=4.48, audio_seconds=0.04, interrupted=True)
    assert stopped.real_time_factor is None and "real-time factor **–**" in summary(stopped)
    spoken = TurnTiming(3, "voice", 0.0, total=3.0, audio_seconds=6.0)
    assert spoken.real_time_factor == pytest.approx(0.5)
