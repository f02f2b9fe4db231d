"""The player's feed, and how much of a cut-off answer was heard."""

from __future__ import annotations

import base64

import numpy as np

from omni_demo.playback import FEED_LINES, PlayerFeed, pcm16
from omni_demo.timings import TurnTiming
from omni_demo.view import Answer, heard_tokens


def numbered(value: str) -> list[tuple[int, str]]:
    header, *lines = value.split("\n")
    assert header.startswith("answer ") and lines[-1] == ""
    return [(int(n), rest) for n, rest in (line.split(" ", 1) for line in lines[:-1])]


def test_feed_lines_are_numbered_and_decode_to_the_samples():
    feed = PlayerFeed(3)
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0], np.float32)
    before = feed.value()
    feed.add(samples, made=1.25)
    assert feed.value().startswith(before)  # Gradio sends an "append" diff, never the whole text again
    (number, line), = numbered(feed.value())
    assert line.startswith("pcm 1250 ")  # made 1.25 s after the answer's first chunk
    pcm = np.frombuffer(base64.b64decode(line.removeprefix("pcm 1250 ")), "<i2")
    np.testing.assert_array_equal(pcm, [0, 16384, -16384, 32767, -32768])
    feed.stop()
    feed.add(samples, made=1.5)  # nothing is played after a stop
    feed.end()
    assert numbered(feed.value()) == [(0, line), (1, "stop")]


def test_an_update_costs_the_same_however_long_the_answer():
    """The value the page gets on each update stays bounded, and a reader that takes lines by number loses
    none, even when it sees only every FEED_LINES-th update."""
    feed = PlayerFeed(1)
    chunk = np.zeros(2400, np.float32)  # 0.1 s of speech a line
    sizes, counts, seen, taken = [], [], [], []
    for i in range(40 * FEED_LINES):
        feed.add(chunk, made=i * 0.1)
        value = feed.value()
        sizes.append(len(value))
        counts.append(value.count("\n") - 1)
        if i % FEED_LINES == FEED_LINES - 1:  # a reader that missed the updates in between
            lines = numbered(value)
            taken += [n for n, _ in lines if n >= len(taken)]
        seen.append(value)
    assert max(sizes) <= 2 * FEED_LINES * (len(numbered(seen[0])[0][1]) + 16) + 20  # + digits of numbers, times
    assert max(counts) == 2 * FEED_LINES  # the same lines at most, at the answer's start and at its end
    assert taken == list(range(40 * FEED_LINES))


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
