"""The figures a turn reports, and the timeline chart of the last turns."""

from __future__ import annotations

import pytest

from omni_demo.timings import CHART_TURNS, STAGES, TurnTiming, chart, log_line, stages, summary


def held_voice_turn(index: int = 1) -> TurnTiming:
    """A voice turn whose speech was held 4 s by the player so that it played without gaps."""
    return TurnTiming(index, "voice", turn_end_wall=100.0, speech_end_wall=99.4, first_text=0.2, first_audio=1.0,
                      first_audio_played=5.0, total=9.0, audio_seconds=3.0)


def test_a_turns_stages_add_up_to_what_the_user_lived():
    turn = held_voice_turn()
    lived = stages(turn)
    assert list(lived) == ["your pause", "your pause, the answer made meanwhile", "to first text", "to first audio",
                           "held for smooth playback", "speaking"]
    # From the end of the voice: the pause, then the wait until the speech played, then the speech itself.
    assert sum(lived.values()) == pytest.approx(turn.silence + turn.first_audio_played + turn.audio_seconds)
    text_only = TurnTiming(2, "typed", 0.0, first_text=0.3, total=2.0)
    assert stages(text_only) == {"your pause": 0.0, "your pause, the answer made meanwhile": 0.0, "to first text": 0.3,
                                 "rest of the text": pytest.approx(1.7)}
    # An answer made in the pause: part of the pause shows it, and the pause is as long as it was.
    prepared = TurnTiming(3, "voice", turn_end_wall=100.0, speech_end_wall=99.4, first_text=0.0, prepared=0.35, total=1.0)
    lived = stages(prepared)
    assert lived["your pause, the answer made meanwhile"] == pytest.approx(0.35)
    assert lived["your pause"] + lived["your pause, the answer made meanwhile"] == pytest.approx(prepared.silence)
    assert "prepared 350 ms before the turn ended" in log_line("tab", prepared, 8)


def test_the_chart_has_every_stage_of_the_last_turns_in_their_order():
    assert chart([]) is None  # no data at all before the first turn
    turns = [held_voice_turn(index) for index in range(1, 15)]
    frame = chart(turns)
    shown = turns[-CHART_TURNS:]
    labels = list(dict.fromkeys(frame["turn"]))
    assert len(labels) == CHART_TURNS
    assert sorted(labels) == labels  # the chart orders its bars by label: 9 before 10
    assert [label.split()[0] for label in labels] == [str(t.index) for t in shown]
    for label in labels:  # every stage, in the order the chart stacks them from the top
        assert list(frame[frame["turn"] == label]["stage"]) == list(reversed(STAGES))
    assert frame["seconds"].sum() == pytest.approx(sum(sum(stages(t).values()) for t in shown))


def test_the_summary_says_when_speech_was_held_or_ran_dry():
    held = held_voice_turn()
    assert "played from **5.00 s**" in summary(held)
    dry = TurnTiming(1, "typed", 0.0, first_text=0.1, first_audio=0.5, first_audio_played=0.55, total=3.0,
                     audio_seconds=2.0, underruns=2, underrun_seconds=0.7)
    assert "played from" not in summary(dry) and "ran dry 2× (700 ms)" in summary(dry)


def test_no_real_time_factor_for_less_than_a_second_of_speech():
    stopped = TurnTiming(2, "voice", 0.0, total=4.48, audio_seconds=0.04, interrupted=True)
    assert stopped.real_time_factor is None and "real-time factor **–**" in summary(stopped)
    spoken = TurnTiming(3, "voice", 0.0, total=3.0, audio_seconds=6.0)
    assert spoken.real_time_factor == pytest.approx(0.5)
