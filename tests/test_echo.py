"""A voice conversation on a laptop's speakers: the answers play back into the microphone through a simulated
room (tests/room.py: delays of 40-400 ms, echo from -20 to 0 dB against the user's voice, noise), through the
real handlers and worker, in real time. The echo canceller (omni_demo/echo.py) must keep the assistant from
taking its own voice for the user's, and let the user cut in over it as fast as without it.

The figures each test measures are printed (pytest -s) and stated in docs/echo.md."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest
from room import Room, speak_with_a_voice, user_voice
from test_live_session import fast_pace

from omni_demo import listener as listener_module
from omni_demo.live import ChatSettings, LiveSession
from omni_demo.worker import ModelWorker

# (delay s, echo dB against the user's voice): a quiet laptop far off to a loud one with a slow path.
ROOMS = [(0.04, -20.0), (0.15, -10.0), (0.25, -6.0), (0.4, 0.0)]
ANSWER_FRAMES = 40  # each answer's speech forced to this many talker frames (3.2 s)
STORY_FRAMES = 200  # the answer the user cuts in on: still being made when they do, on any machine (16 s)
QUESTIONS = ("Tell me about the sea.", "And about the mountains?")
# WebRTC's canceller holds back the user's voice while it has heard little of the far end, with or without
# echo (measured: -8 dB when the user speaks 2 s into the first answer, -2.5 dB at 6 s, none from 12 s on):
# the tests let a tab's first answers play this long before the user cuts in (docs/echo.md).
WARM_SECONDS = 12.0
MIN_ERLE_DB = 15.0
# Silero confirms a turn after 0.3 s of voice; the microphone's chunks (0.1 s) and the 32 ms windows add the rest:
# 0.4 s with headphones in every run. Over an echo AEC3 may hold the start of the voice back a chunk or two:
# 0.4 s in most runs of the four rooms, 0.5 s now and then, 0.6 s once in 2026-12-06's runs (docs/echo.md).
MAX_CUT_IN_SECONDS = 0.5
MAX_CUT_IN_OVER_ECHO_SECONDS = 0.6


@pytest.fixture
def worker():
    w = ModelWorker(max_active=2)
    yield w
    w.stop()


@pytest.fixture
def voiced(monkeypatch):
    """Answers spoken by a recorded voice (room.speak_with_a_voice), as many talker frames long as the tab's
    `max_new_tokens` (the tab fixture's ANSWER_FRAMES)."""
    speak_with_a_voice(monkeypatch)
    settings = ChatSettings.answer_settings
    monkeypatch.setattr(ChatSettings, "answer_settings", lambda self: replace(
        settings(self), talker_min_new_tokens=self.max_new_tokens))


@pytest.fixture
def listened(monkeypatch) -> list[tuple[np.ndarray, float | None]]:
    """What turn-taking was given, chunk by chunk: the microphone after the echo canceller, and the voice a turn
    needed to be confirmed in it (None: turn-taking's own 0.3 s)."""
    given: list[tuple[np.ndarray, float | None]] = []
    hear = listener_module.Listener.hear

    def keep(listener, audio, min_speech_seconds=None):
        given.append((audio, min_speech_seconds))
        return hear(listener, audio, min_speech_seconds)

    monkeypatch.setattr(listener_module.Listener, "hear", keep)
    return given


@pytest.fixture
def tab(worker):
    """Makes tabs whose answers play from their first chunk, as on a GPU; closes them afterwards."""
    made: list[LiveSession] = []

    def make(loaded, echo_cancel: bool = True) -> LiveSession:
        live = LiveSession(f"laptop-{len(made)}", loaded, worker, pace=fast_pace(), echo_cancel=echo_cancel)
        live.update(continue_seconds=0.0, max_new_tokens=ANSWER_FRAMES)
        made.append(live)
        return live

    yield make
    for live in made:
        live.close()


def heard_a_turn(live: LiveSession) -> bool:
    """A confirmed turn is being heard (a cough or a click starts none: turns.py)."""
    turn = live.listener.turn
    return turn is not None and turn.confirmed


def play_answer(room: Room, live: LiveSession, question: str, timeout: float = 120.0) -> list[bool]:
    """A typed question and its spoken answer, heard by the room's microphone until it has all played;
    returns, chunk by chunk, whether a user's turn was being heard (`heard_a_turn`)."""
    live.send(question, [])
    answer, hearing = live.answer, []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        room.hear(0.5, after_each=lambda: hearing.append(heard_a_turn(live)))
        if answer.finished and answer.clock.playing_until() < time.monotonic() - 0.3:
            break
    assert answer.finished
    return hearing


def taken_at(hearing: list[bool], live: LiveSession) -> str:
    """Where the echo was taken for the user, and what the canceller knew then (for a failure's message)."""
    echo = live._echo
    return (f"the echo was taken for the user at {hearing.index(True) / 10:.1f} s of an answer (echo detector "
            f"{echo.detector.found}, microphone clock settled {echo.clock.settled})")


def erle_db(sent: np.ndarray, heard: np.ndarray, echo: np.ndarray, skip_seconds: float = 1.0) -> float:
    """Echo return loss enhancement where the microphone held echo (after the canceller's first second of it)."""
    frame = 1600
    count = min(len(sent), len(heard), len(echo)) // frame
    loud = [i for i in range(count) if np.sqrt(np.mean(echo[i * frame : (i + 1) * frame] ** 2)) > 1e-3]
    loud = loud[round(skip_seconds * 10) :]
    before = sum(np.sum(sent[i * frame : (i + 1) * frame] ** 2) for i in loud)
    after = sum(np.sum(heard[i * frame : (i + 1) * frame] ** 2) for i in loud)
    return float(10 * np.log10(before / after))


def test_without_the_canceller_the_echo_cuts_the_answer_off(qwen3_loaded, tab, voiced):
    """The room is loud enough to matter: with nothing removing the echo, the assistant takes its own voice
    for the user's and cuts itself off (what a laptop does today without headphones)."""
    live = tab(qwen3_loaded, echo_cancel=False)
    room = Room(live, delay=0.15, level_db=-6.0)
    hearing = play_answer(room, live, "Tell me about the sea.")
    assert any(hearing)
    assert live.answer.stop_requested or live.timings[0].interrupted


def playing_ahead(clock, now: float) -> float:
    """Seconds of speech that play on from `now` without a gap (0: none is playing)."""
    for index, (start, seconds) in enumerate(zip(clock.starts, clock.chunks)):
        if start <= now < start + seconds:
            end = start + seconds
            for later, more in zip(clock.starts[index + 1 :], clock.chunks[index + 1 :]):
                if abs(later - end) > 1e-6:
                    break
                end += more
            return end - now
    return 0.0


def cut_in(room: Room, live: LiveSession) -> float:
    """The user asks for a story and speaks over it once a stretch of it plays: seconds from the start of
    their voice to the cut-in (playback stopped). Returns once their turn has ended and is being answered.
    What plays when their voice starts is read on the room's own clock, which a loaded machine runs behind the
    wall's: made slower than it plays, the story plays in chunks with gaps, and a 0.96 s chunk plays on 0.8 s
    only in its first 0.16 s. (A CI run, reading the wall clock, never saw 0.8 s ahead before a 3.2 s story
    ended; how its chunks were placed was not recorded: the assertion's message now says.)"""
    live.update(max_new_tokens=STORY_FRAMES)
    live.send("Tell me a long story.", [])
    answer = live.answer
    deadline = time.monotonic() + 120
    while playing_ahead(answer.clock, room.start + room.now()) < 0.8:  # until its speech plays on for a while
        clock = answer.clock
        assert time.monotonic() < deadline and not answer.finished, (
            f"the story ended before 0.8 s of it played on: chunks {clock.chunks} made at {clock.made} s, starting "
            f"{[round(start - room.start - room.now(), 3) for start in clock.starts]} s from the room's time")
        room.hear(0.1)
    user_at = room.now()
    cut: list[float] = []
    stopped = lambda: answer.clock.stopped_at is not None
    room.hear(4.0, user=user_voice(), user_at=user_at, after_each=lambda: cut.append(room.now()) if stopped() and not cut else None)
    assert cut, "the user's voice did not cut in"
    while live.answer is answer:
        assert time.monotonic() < deadline
        room.hear(0.1)
    return round(cut[0] - user_at, 3)  # whole chunks: no float error past the limit


@pytest.mark.parametrize("delay, level_db", [*ROOMS, (0.25, None)], ids=[*(f"{d * 1000:.0f}ms{l:+.0f}dB" for d, l in ROOMS), "headphones"])
def test_on_laptop_speakers_the_echo_never_cuts_in_and_the_user_does(qwen3_loaded, tab, voiced, listened, delay,
                                                                      level_db):
    """Answers play into the microphone until the canceller has heard WARM_SECONDS of them: none is ever taken
    for the user (while it learnt the room, a turn needed LEARNING_MIN_SPEECH_SECONDS of voice). Then the user
    speaks over one: the cut-in comes as with headphones, or at most two chunks (0.2 s) later."""
    from omni_demo.echo import LEARNING_MIN_SPEECH_SECONDS

    live = tab(qwen3_loaded)
    room = Room(live, delay=delay, level_db=level_db, seed=round(delay * 1000))
    played = 0.0
    while played < WARM_SECONDS:
        hearing = play_answer(room, live, QUESTIONS[len(live.timings) % 2])
        assert not any(hearing), taken_at(hearing, live)
        answer = live.answer
        assert not answer.stop_requested and answer.heard_at_stop is None
        assert answer.clock.heard() == pytest.approx(answer.clock.produced)  # played to its end
        played += answer.clock.produced
    assert not any(t.interrupted for t in live.timings)
    assert live._echo.detector.found is (level_db is not None)  # headphones: the microphone is left as it is
    bars = [bar for _, bar in listened]
    learning = [index for index, bar in enumerate(bars) if bar == LEARNING_MIN_SPEECH_SECONDS]
    assert learning and bars[learning[-1] + 1 :] and not any(bars[learning[-1] + 1 :])  # then, from judged on, never
    answers = len(live.timings)
    echo_seconds = float(np.mean(np.abs(room.echo) > 1e-3) * len(room.echo) / 16000) if level_db is not None else 0.0
    cleaned = np.concatenate([audio for audio, _ in listened])  # the microphone after the canceller, so far
    erle = erle_db(room.sent, cleaned, room.echo) if level_db is not None else None

    seconds = cut_in(room, live)
    # The user's turn as the model got it is the cleaned microphone.
    turn = live.answer.turn
    span = slice(turn.start, turn.start + turn.samples)
    heard = np.concatenate([audio for audio, _ in listened])
    np.testing.assert_array_equal(turn.whole_audio(), heard[span])
    left, left_seconds = echo_left_db(room.sent[span], heard[span], (room.sent - room.echo)[span], room.echo[span])
    print(f"\nroom {delay * 1000:.0f} ms, echo {'none' if level_db is None else f'{level_db:+.0f} dB'}: {answers} answers "
          f"({played:.1f} s of speech) played, none taken for the user; ERLE {erle and round(erle, 1)} dB; "
          f"cut-in {seconds:.2f} s after the user's voice began; in their turn, ERLE {left and round(left, 1)} dB over the "
          f"{left_seconds:.2f} s where the echo outweighed their voice")
    assert seconds <= (MAX_CUT_IN_SECONDS if level_db is None else MAX_CUT_IN_OVER_ECHO_SECONDS)
    if level_db is not None:
        assert echo_seconds > 0 and erle >= MIN_ERLE_DB


@pytest.mark.parametrize("stall_at", [1.0, 2.5], ids=["before-the-echo-is-found", "as-it-is-found"])
def test_a_stalled_microphone_stream_does_not_let_the_echo_in(qwen3_loaded, tab, voiced, stall_at):
    """The microphone's stream stalls for 1.5 s early in the first answer, then its chunks come all at once:
    they were captured in step with what played, and the canceller keeps them so (a CI run on a loaded
    machine took the echo for the user here, docs/echo.md)."""
    live = tab(qwen3_loaded)
    room = Room(live, delay=0.25, level_db=-6.0, seed=250)
    room.stall_once(stall_at, 1.5)
    for question in QUESTIONS:
        hearing = play_answer(room, live, question)
        assert not any(hearing), taken_at(hearing, live)
    assert room.stall is None  # it did stall
    assert not any(t.interrupted for t in live.timings)
    assert live._echo.detector.found is True


@pytest.mark.parametrize("delay, gap, level_db", [(0.15, 2.5, 0.0), (0.15, 5.0, -6.0), (0.25, 5.0, -6.0)])
def test_after_a_short_burst_of_speech_and_a_pause_the_echo_is_not_taken_for_the_user(delay, gap, level_db):
    """A server that slows down after a fast start: the tab's first 0.45 s of speech, `gap` seconds of nothing,
    then 2 s more. From so short a burst AEC3 learns the room wrong, and lets the echo of the next through at
    2-10 dB below itself for half a second; Silero took it for the user in these three rooms (CI runs did so
    too, with speech made slower than it played), until a turn needed more voice while the canceller learns.
    Not in real time: each microphone chunk is handed over as it is captured, its echo from the room's own
    rendering of what played, and the listener is given the canceller's bar as LiveSession.hear gives it."""
    from omni_demo.echo import EchoCanceller, Played
    from omni_demo.listener import Listener
    from omni_demo.turns import SpeechConfirmed
    from room import RATE, _rms, assistant_voice, emitted, impulse_response

    rate, voice = 24000, assistant_voice()
    chunks = [voice[round(0.3 * rate) : round(0.75 * rate)], voice[round(0.75 * rate) : round(2.75 * rate)]]
    base, answer = 1000.0, object()
    starts = [base + 0.6, base + 1.05 + gap]
    response, rng = impulse_response(250), np.random.default_rng(250)
    gain = _rms(user_voice()) / _rms(voice) * 10 ** (level_db / 20)
    canceller, listener, count, tail = EchoCanceller(), Listener(), RATE // 10, len(response) - 1
    confirmed = []
    for index in range(round((starts[1] - base + 2.5) / 0.1)):
        captured = base + index * 0.1
        known = [chunk for chunk, start in zip(chunks, starts) if start - 0.5 <= captured + 0.1]  # sent ahead
        played = Played(answer, known, starts[: len(known)], None) if known else None
        speakers = emitted([(chunks, starts, None)], captured - delay - tail / RATE, count + tail)
        mic = np.convolve(speakers, response, mode="valid")[:count] * gain + rng.normal(0.0, 1e-4, count)
        cleaned = canceller.clean(mic.astype(np.float32), captured + 0.1 + rng.uniform(0.0, 0.01), played)
        heard = listener.hear(cleaned, canceller.min_speech_seconds)
        confirmed += [round(captured - base, 1) for event, _ in heard if isinstance(event, SpeechConfirmed)]
    assert not confirmed, f"the echo was taken for the user at {confirmed} s"
    assert canceller.detector.found is True  # and from then on the canceller's own output was heard


def test_the_echo_detector_judges_across_a_stretch_it_cannot_align():
    """Frames whose far end is not surely aligned (the microphone clock unsettled after a stall) keep their
    place unjudged. Recorded in a CI-like run (tests/data/echo_detector_across_a_stall.json): a short burst of
    speech just before a stall, its echo in the frames the stall made unaligned. Leaving them out set that
    burst against what the microphone heard after the stall, and the detector judged "no echo" (and let the
    echo through)."""
    from pathlib import Path

    from omni_demo.echo import FRAME, EchoDetector

    recorded = json.loads((Path(__file__).parent / "data" / "echo_detector_across_a_stall.json").read_text())
    at, unaligned = recorded["unaligned_at"], recorded["unaligned_frames"]
    frames = [(np.full(FRAME, 10 ** (far / 20)), np.full(FRAME, 10 ** (mic / 20)), True)
              for far, mic in zip(recorded["far_db"], recorded["mic_db"])]
    frames[at:at] = [(np.zeros(FRAME), np.zeros(FRAME), False)] * unaligned
    detector = EchoDetector()
    for index, (far, mic, aligned) in enumerate(frames):
        detector.add(far, mic, aligned)
        if index % 10 == 9:  # once per 0.1 s microphone chunk, as the canceller does
            detector.judge()
    assert detector.found is True


def test_the_microphone_clock_holds_through_stalls_and_starts_afresh_after_a_pause():
    """Every chunk is placed where it was captured, give or take its network delay (0-15 ms): through stalls of
    any length after which the chunks held up come at any pace faster than real time (all at once, or a
    loaded machine catching up slowly), and after the microphone was off (its sample count goes on; the time
    it was off does not count) once it has kept coming at its own pace for MIC_RESUMED_SECONDS."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from omni_demo.echo import MIC_GAP_SECONDS, MIC_RESUMED_SECONDS, MicClock

    stall = st.tuples(st.just("stall"), st.floats(0.05, 8.0), st.sampled_from([1.1, 1.5, 3.0, 1000.0]))
    pause = st.tuples(st.just("pause"), st.floats(MIC_GAP_SECONDS + 0.1, 60.0), st.just(1.0))

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(chunk=st.sampled_from([0.02, 0.1, 0.25, 0.5]), seed=st.integers(0, 2**16),
           events=st.lists(st.tuples(st.floats(0.0, 3.0), st.one_of(stall, pause)), min_size=1, max_size=4))
    def check(chunk, seed, events):
        rng = np.random.default_rng(seed)
        clock, count = MicClock(), round(chunk * 16000)
        captured = 100.0  # when the next chunk's first sample is captured
        known_from = -math.inf  # after a pause, chunks that arrive before this may be placed on the old clock

        def send(arrived: float) -> None:
            nonlocal captured
            placed = clock.place(count, arrived)
            if arrived >= known_from:
                assert captured - 1e-6 <= placed <= captured + 0.015 + 1e-6
            captured += chunk

        for running, (kind, seconds, pace) in [(1.0, ("stall", 0.0, 1.0)), *events]:
            for _ in range(max(1, round(running / chunk))):  # in real time
                send(captured + chunk + rng.uniform(0.0, 0.015))
            if kind == "pause":
                captured += seconds
                known_from = captured + 2 * chunk + 0.015 + MIC_RESUMED_SECONDS
            else:  # what was captured during the stall comes after it, `pace` times faster than real time
                unknown = captured + chunk < known_from  # the pause before is not known yet, nor until this catches up
                known_from = math.inf if unknown else known_from
                sent = captured + seconds
                while captured + chunk < sent:
                    send(sent + rng.uniform(0.0, 0.015))
                    sent += chunk / pace
                if unknown:
                    known_from = captured + 3 * chunk + 0.015 + MIC_RESUMED_SECONDS
        assert clock.settled or captured < known_from + chunk

    check()


def echo_left_db(sent: np.ndarray, heard: np.ndarray, near: np.ndarray, echo: np.ndarray) -> tuple[float | None, float]:
    """ERLE within the user's turn, over its 10 ms frames where the echo outweighs their voice and the noise
    (`near`) tenfold (their pauses between words while the answer played; None if there were none), and
    how many seconds that is. Where both speak, what is echo and what is voice in `heard` cannot be told
    apart, so those frames are not counted."""
    frame, before, after, frames = 160, 0.0, 0.0, 0
    for at in range(0, len(echo) - frame + 1, frame):
        e, n = echo[at : at + frame], near[at : at + frame]
        if np.sum(e**2) > 10 * np.sum(n**2) and np.sqrt(np.mean(e**2)) > 1e-3:
            before += float(np.sum(sent[at : at + frame] ** 2))
            after += float(np.sum(heard[at : at + frame] ** 2))
            frames += 1
    return (float(10 * np.log10(before / after)) if frames else None), frames * frame / 16000


def test_the_echo_detector_keeps_a_bounded_history_for_a_tab_that_stays_open():
    """A tab open for an hour: the detector's memory (and its work per chunk) stays that of 30 s, and once an
    echo is found it records nothing more."""
    from omni_demo.echo import HISTORY_SECONDS, EchoDetector

    detector, frame = EchoDetector(), np.zeros(160, np.float32)
    for _ in range(round(HISTORY_SECONDS * 100) + 500):  # nothing plays: nothing to judge yet
        detector.add(frame, frame)
        detector.judge()
    assert detector.found is None and len(detector._far) == round(HISTORY_SECONDS * 100)
    rng = np.random.default_rng(0)
    for _ in range(300):  # the far end plays, and the microphone hears it
        far = (rng.standard_normal(160) * rng.uniform(0.001, 0.3)).astype(np.float32)
        detector.add(far, far * 0.5)
    detector.judge()
    assert detector.found is True
    size = len(detector._far)
    detector.add(frame, frame)
    assert len(detector._far) == size
