"""The playout rule (omni_demo/playout.py): speech made slower than it plays is held just long enough that it
plays without gaps, speech made faster plays at once, and the page's copy of the rule (player.js, run in
Chromium) plans every chunk exactly where the server's does."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_demo import playout
from omni_demo.playback import PlayerFeed, player_script
from omni_demo.playout import LEAD_SECONDS, Pace, PlaybackClock, SpeechPace


def steady(rate: float, chunks: int, first: float = 0.28, size: float = 0.48, start: float = 10.0):
    """Arrivals of speech made at a constant `rate`: (arrival, seconds) per chunk, the first one shorter."""
    arrivals, t = [(start, first)], start
    for _ in range(chunks - 1):
        t += size / rate
        arrivals.append((t, size))
    return arrivals


def play(arrivals, pace: Pace | None, end: bool = True) -> PlaybackClock:
    clock = PlaybackClock(pace)
    for at, seconds in arrivals:
        clock.add(seconds, arrived=at)
    if end:
        clock.end(at=arrivals[-1][0])
    return clock


def fed_milliseconds(made: float) -> str:
    """The milliseconds the page's feed carries for a chunk the server made `made` seconds after the first:
    "<line> pcm <ms> <base64>" (omni_demo/playback.py)."""
    feed = PlayerFeed(1)
    feed.add(np.zeros(1, np.float32), made)
    return feed.value().splitlines()[1].split(" ")[2]


def earliest_gap_free_start(arrivals) -> float:
    """The earliest start from which every chunk is there before it is due (the arrivals known in advance)."""
    start, played = -math.inf, 0.0
    for at, seconds in arrivals:
        start = max(start, at + LEAD_SECONDS - played)
        played += seconds
    return start


def test_speech_made_faster_than_it_plays_starts_at_once():
    arrivals = steady(rate=3.0, chunks=10)
    clock = play(arrivals, Pace(rate=3.0, length=4.6))
    assert clock.first_start == pytest.approx(arrivals[0][0] + LEAD_SECONDS)
    assert clock.underruns() == []


@pytest.mark.parametrize("rate", [0.3, 0.45, 0.7, 0.95])
def test_speech_made_slower_than_it_plays_is_held_just_long_enough(rate):
    arrivals = steady(rate, chunks=11)
    length = sum(seconds for _, seconds in arrivals)
    clock = play(arrivals, Pace(rate=rate, length=length))  # the last answers were like this one
    assert clock.underruns() == []  # no gap once it started
    earliest = earliest_gap_free_start(arrivals)
    # Held no longer than the safety margin costs: production's time, taken as SAFETY of the rate.
    production = arrivals[-1][0] - arrivals[0][0]
    assert earliest <= clock.first_start <= earliest + production * (1 / playout.SAFETY - 1) + 0.01


def test_with_no_measure_the_first_chunk_waits_for_the_second():
    clock = PlaybackClock(pace=None)
    clock.add(0.28, arrived=10.0)
    assert clock.first_start is None and clock.playing_until() == math.inf and clock.heard(11.0) == 0.0
    clock.add(0.48, arrived=10.2)  # made at 2.4x real time: start now
    assert clock.first_start == pytest.approx(10.2 + LEAD_SECONDS)


def test_the_answers_end_starts_a_held_run_at_once():
    clock = PlaybackClock(Pace(rate=0.4, length=20.0))
    clock.add(0.28, arrived=10.0)
    assert clock.first_start > 20.0  # a long answer expected: held
    clock.end(at=10.5)  # it was a short one
    assert clock.first_start == pytest.approx(10.5 + LEAD_SECONDS)


def test_a_held_run_is_planned_again_as_chunks_come():
    clock = PlaybackClock(Pace(rate=0.9, length=5.0))  # expected nearly real time
    clock.add(0.28, arrived=10.0)
    hopeful = clock.first_start
    assert hopeful > 11.0
    clock.add(0.48, arrived=11.0)  # while it is held, a measure: much slower than that
    assert clock.first_start > hopeful


def test_playback_that_runs_dry_is_counted_and_what_was_heard_too():
    clock = PlaybackClock(Pace(rate=2.0, length=1.5))  # the pace says fast: no hold
    clock.add(0.5, arrived=10.0)  # plays 10.05 .. 10.55
    clock.add(0.5, arrived=10.1)  # straight after: 10.55 .. 11.05
    clock.add(0.5, arrived=12.0)  # ran dry: a new run, measured slow, held
    assert clock.heard(10.80) == pytest.approx(0.75)
    assert clock.heard(12.0) == pytest.approx(1.0)
    clock.end(at=12.0)
    (gap,) = clock.underruns()
    assert gap == pytest.approx(12.05 - 11.05)
    assert clock.stop(at=12.30) == pytest.approx(1.25)
    assert clock.heard(20.0) == pytest.approx(1.25) and clock.playing_until() == 0.0


def test_the_pace_is_the_last_answers_and_a_cut_answer_gives_no_length():
    pace = SpeechPace(answers=2)
    assert pace.current() is None
    pace.record(play(steady(0.5, 5), None), complete=True)
    pace.record(play(steady(0.25, 5), None), complete=False)  # cut short: its rate counts, its length not
    current = pace.current()
    assert current.rate == pytest.approx((0.5 + 0.25) / 2, abs=1e-4)
    assert current.length == pytest.approx(0.28 + 4 * 0.48, abs=1e-3)
    pace.record(play(steady(0.5, 2), None), complete=True)  # a shorter one: the longest is expected
    assert pace.current().length == pytest.approx(0.28 + 4 * 0.48, abs=1e-3)


# ------------------------------------------------------------------ the page's copy of the rule


@pytest.fixture(scope="module")
def page(playwright):
    from conftest import CHROMIUM

    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
    page = browser.new_page()
    # The script as Gradio runs it (js_on_load with `element`, `props` and `watch`), on an empty page.
    page.evaluate(
        "script => { const element = document.createElement('div'); document.body.appendChild(element);"
        " new Function('element', 'props', 'watch', script)(element, {value: ''}, () => {}); }",
        player_script(),
    )
    yield page
    browser.close()


arrival_gaps = st.floats(0.0, 3.0, allow_nan=False)
chunk_seconds = st.sampled_from([0.04, 0.28, 0.48, 0.52, 0.96])
paces = st.none() | st.builds(Pace, st.floats(0.05, 4.0).map(lambda r: round(r, 4)),
                              st.floats(0.3, 30.0).map(lambda s: round(s, 3)))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paces, st.lists(st.tuples(arrival_gaps, chunk_seconds), min_size=1, max_size=25), st.booleans())
def test_the_page_plans_every_chunk_where_the_server_does(page, pace, gaps, ends):
    arrivals, t = [], 100.0
    for gap, seconds in gaps:
        t += gap
        arrivals.append((t, seconds))
    clock = play(arrivals, pace, end=ends)
    theirs = page.evaluate(
        """([pace, arrivals, ends]) => {
            const clock = new window.omniPlayer.PlaybackClock(pace);
            for (const [at, seconds, made] of arrivals) clock.add(seconds, at, parseInt(made, 10) / 1000);
            if (ends) clock.end(arrivals[arrivals.length - 1][0]);
            return JSON.stringify({starts: clock.starts.map(String), runs: clock.runs});
        }""",
        # When each chunk was made, as the page reads it: the feed's own line, in milliseconds (player.js).
        [None if pace is None else {"rate": pace.rate, "length": pace.length},
         [(at, seconds, fed_milliseconds(made)) for (at, seconds), made in zip(arrivals, clock.made)], ends],
    )
    theirs = json.loads(theirs)
    assert theirs["runs"] == clock.runs
    assert [float(s) for s in theirs["starts"]] == pytest.approx(clock.starts, abs=1e-9)


def test_the_page_measures_the_pace_on_when_chunks_were_made_not_when_they_came(page):
    """Two chunks that reach the page together (a delayed update) were not made in no time: the page holds
    the speech as the server's clock, which saw them made 1.2 s apart, does."""
    server = PlaybackClock(pace=None)
    server.add(0.28, arrived=10.0)
    server.add(0.48, arrived=11.2)  # made at 0.4x real time
    starts = page.evaluate(
        """() => {
            const clock = new window.omniPlayer.PlaybackClock(null);
            clock.add(0.28, 20.0, 0.0);
            clock.add(0.48, 20.01, 1.2);  // came 10 ms after the first, made 1.2 s after it
            return clock.starts;
        }"""
    )
    assert starts[0] - 20.0 == pytest.approx(server.first_start - 11.2 + 0.01, abs=1e-9)
    assert starts[0] > 20.01 + 1.0  # held, not started at once
