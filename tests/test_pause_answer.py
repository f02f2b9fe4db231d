"""The answer prepared in the user's pause (omni_demo/live.py: `_prepare`, `_take_back`, `_end_turn`): after
0.2 s of silence in a confirmed voice turn the model closes the turn and answers, held back; the answer
is shown and played when the pause reaches the turn's end, or taken back, exactly, if the voice comes back.
Through the real handlers and model worker on the tiny model."""

from __future__ import annotations

import time

import numpy as np
import soundfile
from speech import silence, speech_48k
from test_live_session import engine, files, finish, kinds, new_session, speak, worker  # noqa: F401

from model.engine.events import TextDelta
from model.session import OmniSession
from omni_demo.capture import MicResampler


def held_text(answer, timeout: float = 60.0) -> None:
    """Waits until the held answer has text made."""
    deadline = time.monotonic() + timeout
    while not any(isinstance(e, TextDelta) for e in answer.held_events) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(isinstance(e, TextDelta) for e in answer.held_events)


def test_the_answer_is_made_in_the_pause_and_shown_when_the_turn_ends(loaded, worker):  # noqa: F811
    live = new_session(loaded, worker)
    assert speak(live, np.concatenate([silence(0.3), speech_48k(), silence(0.4)])) == 0  # paused, not ended
    answer = live.answer
    assert answer is not None and answer.held
    held_text(answer)
    # Made, and nothing of it shown or played: the user is still in their pause.
    assert not [m for m in live.chat if m["role"] == "assistant"] and not answer.chunks
    assert answer.feed.value().count("\n") <= 1 and live.status().startswith("👂")
    assert speak(live, silence(0.4)) == 1  # the pause reaches 0.6 s: the turn ends
    assert not answer.held and answer.message in live.chat and answer.text  # shown at once
    finish(live, worker)
    timing = live.timings[-1]
    assert timing.first_text == 0.0 and timing.prepared > 0  # (fed faster than spoken here: no figure)
    session = engine(live)
    assert kinds(session.history) == ["live", "answer"]
    # The turn is what the model was given, up to the pause that prepared the answer, and its clip too.
    record, turn = session.history[0], answer.turn
    np.testing.assert_array_equal(record.audio, turn.whole_audio())
    clip, rate = soundfile.read(files(live, "user")[0], dtype="float32")
    assert rate == 16_000 and len(clip) == len(record.audio)
    # The answer is the one the model gives that turn, unprepared.
    alone = OmniSession(loaded)
    alone.feed(record.audio)
    alone.end_user_turn()
    tokens = [e.token for e in alone.respond(live.settings.answer_settings()) if isinstance(e, TextDelta)]
    assert answer.tokens == tokens


def test_speech_that_comes_back_in_the_pause_takes_the_prepared_answer_back(loaded, worker):  # noqa: F811
    live = new_session(loaded, worker)
    first = np.concatenate([silence(0.3), speech_48k(), silence(0.4)])
    assert speak(live, first) == 0
    prepared = live.answer
    held_text(prepared)
    second = np.concatenate([speech_48k(), silence(1.0)])
    assert speak(live, second) == 1
    finish(live, worker)
    assert prepared.retracted and live.answer is not prepared and not live.answer.retracted
    assert len(live.timings) == 1 and [m["role"] for m in live.chat if isinstance(m["content"], str)] == ["user", "assistant"]
    assert len(files(live, "user")) == 1
    session = engine(live)
    assert kinds(session.history) == ["live", "answer"]
    # The turn's sound is the microphone's, contiguous from its start, the pause included, and the caches
    # are token for token what the same speech given as one turn builds.
    record, turn = session.history[0], live.answer.turn
    stream = MicResampler()(48_000, np.concatenate([first, second]))
    np.testing.assert_array_equal(record.audio, stream[turn.start : turn.start + len(record.audio)])
    assert len(record.audio) > len(speech_48k()) * 2 / 3
    whole = OmniSession(loaded)
    whole.feed(record.audio)
    whole.end_user_turn()
    assert session.thinker.ids[: len(whole.thinker.ids)] == whole.thinker.ids
