"""One tab's live conversation on the tiny model: microphone chunks in, turns, answers, barge-in, faults.

The handlers are called as Gradio calls them (48 kHz int16 chunks of real speech) and the model runs on
the real worker thread; only the browser is left out (tests/test_browser.py has it)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from speech import chunks, silence, speech_48k

from model import constants as C
from model.session import AnswerTurn, LiveTurn, UserTurn
from omni_demo.capture import MicResampler
from omni_demo.live import LiveSession
from omni_demo.playout import Pace, PlaybackClock, SpeechPace
from omni_demo.view import heard_tokens
from omni_demo.worker import ModelWorker


@pytest.fixture
def worker():
    w = ModelWorker(max_active=2)
    yield w
    w.stop()


def new_session(loaded, worker, key="tab", zero_gpu=False, prepare=True, **settings) -> LiveSession:
    """A tab whose microphone is fed faster than it speaks (`speak`), so without the echo canceller: its far
    end is what plays at the moment each sample is captured, which only a real-time microphone gives
    (tests/test_echo.py runs it so, through a simulated room). `prepare=False`: no answer is prepared in a
    pause (tests/test_pause_answer.py tests that), the turn ends and is answered as on ZeroGPU."""
    live = LiveSession(key, loaded, worker, zero_gpu=zero_gpu, echo_cancel=False)
    live.update(max_new_tokens=8, **settings)
    if not prepare:
        live.listener.set_prepare(0.0)
    return live


def speak(live: LiveSession, audio: np.ndarray, realtime: bool = False) -> int:
    """Feeds audio as the browser does; returns how many chunks ended a turn."""
    ended = 0
    for rate, chunk in chunks(audio):
        ended += live.hear(rate, chunk)
        if realtime:
            time.sleep(len(chunk) / rate)
    return ended


def finish(live: LiveSession, worker: ModelWorker) -> None:
    assert worker.idle(300), "the model worker did not finish"
    assert not live.answering


def kinds(history) -> list[str]:
    names = {UserTurn: "user", LiveTurn: "live", AnswerTurn: "answer"}
    return [names[type(r)] for r in history]


def engine(live: LiveSession):
    return live.model._engine


def texts(live: LiveSession, role: str) -> list[str]:
    return [m["content"] for m in live.chat if m["role"] == role and isinstance(m["content"], str)]


def files(live: LiveSession, role: str) -> list[str]:
    return [m["content"]["path"] for m in live.chat if m["role"] == role and isinstance(m["content"], dict)]


def test_a_spoken_question_is_prefilled_while_spoken_and_answered(loaded, worker):
    live = new_session(loaded, worker)
    question = np.concatenate([silence(0.5), speech_48k(), speech_48k()])  # about 6 s of speech
    assert speak(live, question) == 0
    assert worker.idle(120)
    assert engine(live) is not None and engine(live).live_windows >= 2  # 2 s windows already in the cache
    assert speak(live, silence(1.5)) == 1  # the pause ends the turn and starts the answer
    finish(live, worker)
    voice, answer_clip = files(live, "user")[0], files(live, "assistant")[0]
    assert voice.endswith(".wav") and answer_clip.endswith(".wav")
    assert texts(live, "user")[0].startswith("🎙️ ")
    assert texts(live, "assistant")[0]  # streamed text
    timing = live.timings[-1]
    assert timing.kind == "voice" and 0 < timing.first_text <= timing.first_audio <= timing.total
    assert 0.55 < timing.silence < 1.0  # the 0.6 s pause (and one 0.2 s chunk at most) before the turn ended
    assert " pcm " in live.answer.feed.value() and live.answer.feed.value().endswith(" end\n")
    history = engine(live).history
    assert kinds(history) == ["live", "answer"]
    # The speech, its pre-roll, and the pause until the answer was prepared (0.2 s and a chunk at most).
    assert abs(len(history[0].audio) / C.INPUT_SAMPLE_RATE - (6.4 + 0.3 + 0.3)) < 0.6


def test_typed_turns_and_the_voice_setting(loaded, worker):
    live = new_session(loaded, worker, voice="Ethan")
    assert live.send("Hello there", []) is None
    finish(live, worker)
    assert texts(live, "user") == ["Hello there"] and files(live, "assistant")
    assert live.timings[-1].kind == "typed"
    assert live.answer.settings.voice == "Ethan"


def test_a_corrupt_upload_is_refused_and_the_session_goes_on(loaded, worker, assets):
    live = new_session(loaded, worker, text_only=True)
    refused = live.send("what is this?", [str(assets / "corrupt.mp4")])
    assert refused and "corrupt.mp4" in refused
    assert live.chat[-1]["metadata"]["title"].endswith("Could not answer")
    assert live.send("", []) == "Say, type or upload something first."
    assert live.send("Then say hello.", []) is None
    finish(live, worker)
    assert texts(live, "assistant")[-1] and engine(live).turns == 1


def test_a_fault_inside_the_model_keeps_the_conversation(loaded, worker):
    live = new_session(loaded, worker, text_only=True)
    live.send("First question.", [])
    finish(live, worker)
    before = list(engine(live).thinker.ids)
    live.update(voice="Nobody", text_only=False)  # respond() raises: this checkpoint has no such voice
    live.send("Second question.", [])
    finish(live, worker)
    assert "Unknown voice" in live.chat[-1]["content"]
    live.update(voice="Chelsie")
    live.send("Third question.", [])
    finish(live, worker)
    assert engine(live).thinker.ids[: len(before)] == before  # the first exchange is still there
    assert kinds(engine(live).history) == ["user", "answer", "user", "answer"]


def test_speaking_during_an_answer_cuts_in(loaded, worker):
    live = new_session(loaded, worker)
    live.update(max_new_tokens=400)
    live.send("Tell me a long story.", [])
    deadline = time.monotonic() + 120
    while live.answer.clock.produced == 0 and time.monotonic() < deadline:  # until its speech is playing
        time.sleep(0.05)
    assert live.answering
    first = live.answer
    live.update(max_new_tokens=8)  # the next answer (settings are taken per answer)
    assert speak(live, np.concatenate([speech_48k(), silence(1.0)])) == 1
    finish(live, worker)
    assert first.feed.value().endswith(" stop\n") and first.heard_at_stop is not None  # the player was stopped
    cut = [m for m in live.chat if m.get("metadata", {}).get("title", "").startswith("✋ Interrupted")]
    assert cut == [first.message] and first.message["content"].endswith(" …")
    assert first.timing.interrupted and [t.interrupted for t in live.timings] == [True, False]
    history = engine(live).history
    assert kinds(history) == ["user", "answer", "live", "answer"]
    # The first answer is kept in the model's memory only as far as it was heard.
    assert history[1].tokens == first.tokens[: heard_tokens(first, first.heard_at_stop)]
    assert len(history[1].tokens) < len(first.tokens)


def test_tabs_are_isolated(loaded, worker):
    a, b = new_session(loaded, worker, "a", text_only=True), new_session(loaded, worker, "b", text_only=True)
    a.send("Apples are red.", [])
    speak(b, np.concatenate([silence(0.3), speech_48k(), silence(1.0)]))
    finish(a, worker)
    finish(b, worker)
    tokenizer = loaded.processor.tokenizer
    assert "Apples" in tokenizer.decode(engine(a).thinker.ids)
    assert "Apples" not in tokenizer.decode(engine(b).thinker.ids)
    assert C.AUDIO_TOKEN_ID in engine(b).thinker.ids and C.AUDIO_TOKEN_ID not in engine(a).thinker.ids
    assert texts(a, "user") == ["Apples are red."] and texts(b, "user")[0].startswith("🎙️")


def test_closing_a_tab_stops_its_answer_and_frees_its_files(loaded, worker):
    live = new_session(loaded, worker)
    live.update(max_new_tokens=400)
    live.send("Tell me a long story.", [])
    time.sleep(1.0)
    directory = live.directory
    assert directory.exists()
    live.close()
    assert worker.idle(30)  # stopped within a step, not after 400 tokens
    assert not directory.exists()
    assert live.hear(48_000, speech_48k()) is False  # a closed tab hears nothing


@pytest.fixture
def zero_gpu_calls(loaded, monkeypatch):
    """ZeroGPU runs a turn in a forked process, as `spaces` 0.51.3 does it (spaces/zero/wrappers.py): the request
    and every yield are pickled, nothing else survives the call, and an exception raised inside reaches the
    caller as `gr.Error(<its class name>, title="ZeroGPU worker error")`, its message lost (the package's own
    `error`). The requests and what each call yielded are recorded."""
    import pickle

    import gradio as gr
    from spaces.zero.gradio import error

    from omni_demo import gpu

    calls = []
    gpu.serve(loaded)

    def forked(request):
        calls.append((request, []))
        try:
            for item in gpu.answer_turn(pickle.loads(pickle.dumps(request))):
                calls[-1][1].append(item)
                yield pickle.loads(pickle.dumps(item))
        except gr.Error:
            raise
        except Exception as inside:  # noqa: BLE001 - as the package hands it over
            raise error(gpu.WORKER_ERROR_TITLE, type(inside).__name__) from None

    monkeypatch.setattr(gpu, "run_turn", forked)
    return calls


def speak_with_camera(live: LiveSession, audio: np.ndarray) -> int:
    ended = 0
    for i, (rate, chunk) in enumerate(chunks(audio)):
        if i % 3 == 0:
            live.see(camera(i))
        ended += live.hear(rate, chunk)
    return ended


def test_on_zero_gpu_each_turn_is_one_pickled_call_that_answers_as_the_worker_does(loaded, worker, zero_gpu_calls):
    """A camera turn, then a typed one: the conversation comes out of the GPU calls as the persistent
    worker's does (the same records, pictures included, and the same answers)."""
    zero = new_session(loaded, worker, "zero", zero_gpu=True, seed=3)
    local = new_session(loaded, worker, "local", prepare=False, seed=3)  # ZeroGPU prepares none
    question = np.concatenate([silence(0.3), speech_48k(), silence(1.0)])
    for live in (zero, local):
        assert speak_with_camera(live, question) == 1
    assert list(zero.follow()) and zero.answer.finished  # the GPU call runs inside the page's event
    list(local.follow())  # until its speech has played too: a message sent earlier would cut in
    finish(local, worker)
    for live in (zero, local):
        assert live.send("And then?", []) is None
    list(zero.follow())
    finish(local, worker)

    requests = [request for request, _ in zero_gpu_calls]
    assert len(requests) == 2 and engine(zero) is None  # no caches outside the calls
    assert [len(r.history) for r in requests] == [0, 2] and requests[0].audio is not None and requests[0].frames
    ours, theirs = zero.model.history, engine(local).history
    assert kinds(ours) == kinds(theirs) == ["live", "answer", "user", "answer"]
    np.testing.assert_array_equal(ours[0].audio, theirs[0].audio)
    assert len(ours[0].frames) == len(theirs[0].frames) > 0
    assert all(np.array_equal(a, b) and s == t for (a, s), (b, t) in zip(ours[0].frames, theirs[0].frames))
    assert [r.tokens for r in ours if isinstance(r, AnswerTurn)] == [r.tokens for r in theirs if isinstance(r, AnswerTurn)]
    assert [m["content"] for m in zero.chat if isinstance(m["content"], str)] == [
        m["content"] for m in local.chat if isinstance(m["content"], str)
    ]
    assert gpu_seconds(requests[1]) >= gpu_seconds(requests[0]) > 20


def gpu_seconds(request) -> int:
    from omni_demo import gpu

    return gpu.turn_seconds(request)


def test_on_zero_gpu_a_cut_off_answer_keeps_the_ids_the_model_chose(loaded, worker, zero_gpu_calls):
    """Cut off mid-answer, the call's final history never comes back: the tab keeps the ids that streamed
    out, not a re-tokenisation of their text (which can differ)."""
    from model.session import TextDelta

    zero = new_session(loaded, worker, "zero", zero_gpu=True, text_only=True)
    zero.update(max_new_tokens=200)
    zero.send("Tell me a long story.", [])
    for view in zero.follow():
        if len(zero.answer.tokens) >= 12:
            zero.stop()
    streamed = [e.token for e in zero_gpu_calls[0][1] if isinstance(e, TextDelta)]
    kept = zero.model.history[-1]
    assert isinstance(kept, AnswerTurn) and 12 <= len(kept.tokens) < 200
    assert kept.tokens == streamed[: len(kept.tokens)] == zero.answer.tokens[: len(kept.tokens)]
    zero.update(max_new_tokens=4)
    zero.send("Go on.", [])
    list(zero.follow())
    assert zero.answer.done is not None and not zero.answer.done.interrupted  # the next call rebuilt it


def test_on_zero_gpu_a_late_voice_turn_trims_and_the_trimmed_history_comes_back(loaded, worker, zero_gpu_calls):
    limit = 420
    zero = LiveSession("zero", loaded, worker, zero_gpu=True, max_positions=limit)  # each call's session gets it
    zero.update(max_new_tokens=8, text_only=True)
    for i in range(12):
        zero.send(f"Question number {i}, with a few more words to take up some room?", [])
        list(zero.follow())
    for _ in range(2):
        assert speak(zero, np.concatenate([silence(0.3), speech_48k(), silence(1.0)])) == 1
        list(zero.follow())
        assert zero.answer.done is not None and not zero.chat[-1].get("metadata", {}).get("title", "").startswith("⚠️")
        history = zero.model.history
        assert kinds(history)[-2:] == ["live", "answer"] and sum(r.span for r in history) <= limit


def test_an_answer_past_the_turn_limit_is_stopped_and_the_session_goes_on(loaded, worker):
    live = LiveSession("slow", loaded, worker, turn_timeout_s=1.0)
    live.update(max_new_tokens=1000, text_only=True)
    started = time.monotonic()
    live.send("Tell me everything.", [])
    finish(live, worker)
    assert time.monotonic() - started < 30  # not 1000 tokens
    assert live.answer.timed_out and live.chat[-1]["metadata"]["title"].endswith("Stopped")
    last = engine(live).history[-1]
    assert isinstance(last, AnswerTurn) and 0 < len(last.tokens) < 1000
    live.turn_timeout_s = 300
    live.update(max_new_tokens=4)
    live.send("Short, then.", [])
    finish(live, worker)
    assert not live.answer.timed_out


def test_a_waiting_tab_is_told_its_place(loaded):
    worker = ModelWorker(max_active=1)
    try:
        first, second = new_session(loaded, worker, "first"), new_session(loaded, worker, "second")
        first.update(max_new_tokens=200, text_only=True)
        first.send("A long answer, please.", [])
        second.send("Me too.", [])
        assert second.status().startswith("⏳ Waiting for the model: 1 conversation ahead")
        first.stop()
        finish(second, worker)
        assert second.status().startswith(("🔊", "🎙️", "Ready"))
    finally:
        worker.stop()


def test_out_of_memory_inside_a_turn_is_reported_and_the_session_goes_on(loaded, worker):
    """A GPU out-of-memory mid-answer (raised for real by torch on a GPU; injected here into one decode
    step): the user is told, the failed turn is dropped, and the conversation before it answers on."""
    import torch

    live = new_session(loaded, worker, text_only=True)
    live.send("First question.", [])
    finish(live, worker)
    cache = engine(live).thinker.cache
    forward = cache.forward

    def out_of_memory(module, embeds, *args, **kwargs):
        if embeds.shape[1] > 1:  # the question's prefill
            return forward(module, embeds, *args, **kwargs)
        cache.forward = forward  # once: the answer's first decode step, which the worker runs
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cache.forward = out_of_memory
    live.send("Second question.", [])
    finish(live, worker)
    assert "OutOfMemoryError" in live.chat[-1]["content"] and "conversation is kept" in live.chat[-1]["content"]
    assert kinds(engine(live).history) == ["user", "answer"]  # the failed turn is gone
    live.send("Third question.", [])
    finish(live, worker)
    assert kinds(engine(live).history) == ["user", "answer", "user", "answer"]
    assert live.answer.tokens


def camera(index: int) -> np.ndarray:
    """A webcam frame as Gradio hands it (RGB uint8), different each time."""
    return np.random.default_rng(index).integers(0, 256, (120, 160, 3), dtype=np.uint8)


def expected_audio_tokens(audio: np.ndarray) -> int:
    from model.families.qwen2_5_omni.processing import audio_token_count

    windows = [audio[i : i + 32000] for i in range(0, len(audio), 32000)]
    return sum(audio_token_count(-(-len(w) // 160)) for w in windows if len(w) >= 321)


@pytest.mark.parametrize("camera_pattern", ["every 0.5 s", "bursts of 3", "from another thread"])
def test_every_audio_token_of_a_camera_turn_reaches_the_model(loaded, worker, camera_pattern):
    """Microphone chunks as Gradio gives them, with webcam frames interleaved several ways: the model gets all
    of the turn's sound (every audio token) and its pictures, however the two streams interleaved."""
    import threading

    from model.engine.session import OmniSession

    # (An answer prepared in a pause and taken back redoes the turn's last window: not here.)
    live = new_session(loaded, worker, prepare=False, text_only=True)
    question = np.concatenate([silence(0.3), speech_48k(), speech_48k(), silence(1.2)])
    pieces = list(chunks(question))
    if camera_pattern == "from another thread":
        stop = threading.Event()

        def webcam():
            index = 0
            while not stop.is_set():
                live.see(camera(index))
                index += 1
                time.sleep(0.05)

        thread = threading.Thread(target=webcam)
        thread.start()
        try:
            for rate, chunk in pieces:
                live.hear(rate, chunk)
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join()
    else:
        for i, (rate, chunk) in enumerate(pieces):
            if camera_pattern == "every 0.5 s" and i % 2 == 0:
                live.see(camera(i))
            if camera_pattern == "bursts of 3" and i % 5 == 0:
                for k in range(3):
                    live.see(camera(100 * i + k))
            live.hear(rate, chunk)
    finish(live, worker)
    session = engine(live)
    record = session.history[0]
    assert kinds(session.history) == ["live", "answer"] and record.frames  # the pictures are in
    heard = live.answer.turn.whole_audio()
    np.testing.assert_array_equal(record.audio, heard[: len(record.audio)])
    assert len(heard) - len(record.audio) < 321  # at most a tail too short for one token
    assert session.thinker.ids.count(C.AUDIO_TOKEN_ID) == expected_audio_tokens(heard)
    # Whatever was redone on the way (a frame from another thread can come late), the prompt is the one the
    # turn's content gives when fed whole.
    whole = OmniSession(loaded)
    whole.feed(record.audio, record.frames)
    whole.end_user_turn()
    assert session.thinker.ids[: len(whole.thinker.ids)] == whole.thinker.ids
    if camera_pattern != "from another thread":  # frames in step with the sound: no window is ever redone
        assert session.windows_redone == 0


def test_handlers_never_touch_the_engine(loaded, worker, monkeypatch):
    """Only the worker's thread may use a tab's engine: handlers (and a barge-in) only submit jobs."""
    import threading

    from model.engine.session import OmniSession

    callers = []
    for name in ("feed", "feed_audio", "feed_frame", "end_user_turn", "add_user_turn", "respond", "interrupt",
                 "keep_answer", "restore"):
        original = getattr(OmniSession, name)

        def spy(self, *args, _original=original, **kwargs):
            callers.append(threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(OmniSession, name, spy)
    live = new_session(loaded, worker)
    live.update(max_new_tokens=300)
    live.send("Tell me a long story.", [])
    deadline = time.monotonic() + 120
    while live.answer.clock.produced == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    speak(live, np.concatenate([speech_48k(), silence(1.0)]))  # cuts in, then a voice turn
    live.stop()
    live.update(system_prompt="You are brief.")
    finish(live, worker)
    live.clear()
    live.close()
    assert worker.idle(60)
    assert callers and set(callers) == {"model-worker"}


def test_a_clip_being_written_never_holds_up_the_page(loaded, worker, monkeypatch):
    """The microphone handler writes the turn's clip and thumbnail: the view's lock, which the worker takes
    for every answer event, must be free meanwhile (one tab's disk write stalled every tab's decoding)."""
    import threading

    import omni_demo.live as live_module

    free_while_writing = []
    write = live_module.soundfile.write

    def slow_write(*args, **kwargs):
        taken = threading.Event()

        def worker_side():
            with live.view:
                taken.set()

        threading.Thread(target=worker_side).start()
        free_while_writing.append(taken.wait(2.0))
        return write(*args, **kwargs)

    monkeypatch.setattr(live_module.soundfile, "write", slow_write)
    live = new_session(loaded, worker, text_only=True)
    live.see(camera(0))
    assert speak(live, np.concatenate([silence(0.3), speech_48k(), silence(1.2)])) == 1
    finish(live, worker)
    assert free_while_writing == [True]


def test_a_failed_prefill_keeps_the_turn_whole_and_the_last_answer_playing(loaded, worker, monkeypatch):
    """A window's prefill fails while the user speaks: the previous answer's playback is left alone, and the
    caches are rebuilt and given the whole turn again, so the answer still hears every audio token."""
    from model.engine.session import OmniSession

    live = new_session(loaded, worker)
    live.send("Hello.", [])
    finish(live, worker)
    previous = live.answer
    with live.view:
        previous.clock.add(60.0)  # as if a minute of it were still to play
    assert live.status().startswith("🔊")
    feed, failures = OmniSession.feed, []

    def failing_once(self, audio, frames=()):
        if not failures:
            failures.append(True)
            raise RuntimeError("a fault in the encoder")
        return feed(self, audio, frames)

    monkeypatch.setattr(OmniSession, "feed", failing_once)
    worker.submit(live.key, live.model.feed(speech_48k()[:8000].astype(np.float32) / 32768, []), live.model.prefill_failed)
    assert worker.idle(60) and failures
    # Still playing, on the page and by the server's clock: the fault stopped neither.
    assert not previous.feed.stopped and previous.clock.stopped_at is None and live.status().startswith("🔊")
    live.clear()  # that piece was no turn the listener heard: start a real one afresh
    failures.clear()
    question = np.concatenate([silence(0.3), speech_48k(), speech_48k(), silence(1.2)])
    assert speak(live, question) == 1
    finish(live, worker)
    assert failures == [True]  # the first window's prefill failed
    session = engine(live)
    assert kinds(session.history) == ["live", "answer"]
    assert session.thinker.ids.count(C.AUDIO_TOKEN_ID) == expected_audio_tokens(live.answer.turn.whole_audio())


@pytest.mark.parametrize("spoken", [False, True])
def test_a_pause_inside_a_question_keeps_it_one_turn(loaded, worker, spoken):
    """Speech that resumes soon after the turn ended, before any of the answer was heard, continues the
    turn: the started answer leaves no trace, the turn stays one, and the model holds the whole speech,
    pause included, as if it had never been split."""
    from model.session import OmniSession
    from omni_demo.capture import MicResampler

    live = new_session(loaded, worker, text_only=not spoken)
    if not spoken:
        live.update(max_new_tokens=400)  # a text answer still being written when the user goes on
    first = np.concatenate([silence(0.3), speech_48k(), silence(0.7)])
    assert speak(live, first) == 1  # the pause ended the turn: an answer starts
    retracted = live.answer
    if not spoken:  # some of its text is on the page when the user goes on
        deadline = time.monotonic() + 60
        while len(retracted.tokens) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert retracted.text and not retracted.finished
        live.update(max_new_tokens=8)
    second = np.concatenate([silence(0.2), speech_48k(), silence(1.0)])
    assert speak(live, second) == 1
    finish(live, worker)
    assert retracted.retracted and live.answer is not retracted
    assert len(live.timings) == 1 and not live.timings[0].interrupted
    assert not any(m.get("metadata", {}).get("title", "").startswith("✋") for m in live.chat)
    assert [m["role"] for m in live.chat if isinstance(m["content"], str)] == ["user", "assistant"]
    assert len(files(live, "user")) == 1  # one clip: the whole turn
    session = engine(live)
    assert kinds(session.history) == ["live", "answer"]
    record = session.history[0]
    # The turn's sound is the microphone's, contiguous from its start, the pause included.
    stream = MicResampler()(48_000, np.concatenate([first, second]))
    turn = live.answer.turn
    np.testing.assert_array_equal(record.audio, stream[turn.start : turn.start + len(record.audio)])
    assert len(record.audio) > len(speech_48k()) * 2 / 3  # both sentences (48 kHz -> 16 kHz)
    # Token for token what the same speech given as one turn builds.
    whole = OmniSession(loaded)
    whole.feed(record.audio)
    whole.end_user_turn()
    prompt = session.thinker.ids[: len(whole.thinker.ids)]
    assert prompt == whole.thinker.ids


@pytest.mark.parametrize("call_finished", [False, True])
def test_on_zero_gpu_a_pause_inside_a_question_keeps_it_one_turn(loaded, worker, zero_gpu_calls, call_finished):
    """The same on ZeroGPU, where the answer is the page's GPU call: speech that resumes while the call runs
    cuts it short, or, once it has finished (its answer not heard yet), takes its turn and answer back out of
    the history; the next call gets the whole turn."""
    import threading

    if call_finished:  # a spoken answer (a text one read in full stays), all made, none of it played yet
        zero = new_session(loaded, worker, "zero", zero_gpu=True)
    else:
        zero = new_session(loaded, worker, "zero", zero_gpu=True, text_only=True)
        zero.update(max_new_tokens=400)
    first = np.concatenate([silence(0.3), speech_48k(), silence(0.7)])
    assert speak(zero, first) == 1
    retracted = zero.answer
    if call_finished:  # a page whose player has not started it yet when the user goes on (held, however long
        retracted.clock.heard = lambda at=None: 0.0  # the call took on this CPU)
    call = threading.Thread(target=lambda: list(zero.follow()))  # the page's event, making the GPU call
    call.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (retracted.finished if call_finished else len(retracted.tokens) >= 2):
        time.sleep(0.02)
    if call_finished:
        call.join(60)
        assert kinds(zero.model.history) == ["live", "answer"]  # kept, before the user went on
    second = np.concatenate([silence(0.2), speech_48k(), silence(1.0)])
    assert speak(zero, second) == 1
    call.join(120)
    assert worker.idle(60)
    list(zero.follow())  # the continued turn's call
    assert retracted.retracted and zero.answer is not retracted and zero.answer.done is not None
    history = zero.model.history
    assert kinds(history) == ["live", "answer"]  # one turn, one answer
    assert len(files(zero, "user")) == 1 and len(zero.timings) == 1
    stream = MicResampler()(48_000, np.concatenate([first, second]))
    turn = zero.answer.turn
    np.testing.assert_array_equal(history[0].audio, stream[turn.start : turn.start + len(history[0].audio)])
    assert len(history[0].audio) > len(speech_48k()) * 2 / 3  # both sentences


def server_pace(second_chunk_seconds: float, made_after: float) -> SpeechPace:
    """A server whose last answer was a 1 s chunk, then one of `second_chunk_seconds` made `made_after` later."""
    clock = PlaybackClock()
    clock.add(1.0, arrived=0.0)
    clock.add(second_chunk_seconds, arrived=made_after)
    pace = SpeechPace()
    pace.record(clock, complete=True)
    return pace


def fast_pace() -> SpeechPace:
    """A server that has made speech faster than it plays (as on a GPU): a new answer plays from its first
    chunk, long before it is all made. (On this CPU the player would hold a slow answer's start, up to its end.)"""
    return server_pace(1.0, made_after=0.5)


def test_speech_after_the_answer_began_playing_cuts_in_even_within_the_grace(loaded, worker):
    live = LiveSession("tab", loaded, worker, pace=fast_pace(), echo_cancel=False)  # fed faster than real time
    live.update(max_new_tokens=400, continue_seconds=3.0)  # the cut-in comes while the answer is still made
    assert speak(live, np.concatenate([silence(0.3), speech_48k(), silence(0.7)])) == 1
    first = live.answer
    deadline = time.monotonic() + 120
    while first.clock.heard() == 0 and time.monotonic() < deadline:  # until some of it has been heard
        time.sleep(0.02)
    assert first.clock.heard() > 0
    live.update(max_new_tokens=8)
    assert speak(live, np.concatenate([speech_48k(), silence(1.0)])) == 1
    finish(live, worker)
    assert not first.retracted and first.heard_at_stop is not None
    assert kinds(engine(live).history) == ["live", "answer", "live", "answer"]
    assert [t.interrupted for t in live.timings] == [True, False]


def test_each_answer_logs_one_line(loaded, worker, caplog):
    import logging

    live = new_session(loaded, worker, "console-tab", text_only=True)
    with caplog.at_level(logging.INFO, logger="omni_demo.tab_model"):
        live.send("Hello there", [])
        finish(live, worker)
    lines = [r.getMessage() for r in caplog.records if r.name == "omni_demo.tab_model"]
    assert len(lines) == 1
    assert lines[0].startswith("tab console- typed turn 1: first text ") and lines[0].endswith(
        f"{len(live.answer.tokens)} tokens")


def test_refused_uploads_show_what_was_sent_and_each_error_apart(loaded, worker, assets):
    live = new_session(loaded, worker, text_only=True)
    for _ in range(2):
        assert live.send("what is this?", [str(assets / "corrupt.mp4")])
    roles = [m["role"] for m in live.chat]
    assert roles == ["user", "user", "assistant"] * 2  # the file, the text, then why: never two errors in a row
    assert live.chat[0]["content"] == "📎 corrupt.mp4" and live.chat[1]["content"] == "what is this?"


def test_an_answer_cut_off_before_any_was_heard_keeps_no_clip(loaded, worker):
    live = new_session(loaded, worker)
    live.update(max_new_tokens=400)
    live.send("Tell me a long story.", [])
    with live.view:  # a player holding the speech back (as if it were made far slower than it plays)
        live.answer.clock = PlaybackClock(Pace(rate=0.01, length=60.0))
    deadline = time.monotonic() + 120
    while not live.answer.chunks and time.monotonic() < deadline:  # its first speech is on its way
        time.sleep(0.01)
    assert live.answer.chunks
    live.stop()  # before the player has started it: nothing of it was heard
    finish(live, worker)
    assert live.answer.heard_at_stop is not None and live.answer.heard_at_stop < 0.1
    assert files(live, "assistant") == [] and live.answer.clip is None
    assert not list(live.directory.glob("*-answer.wav"))


def test_follow_never_misses_the_last_view(loaded, worker):
    """The answer finishes (on the worker) just as `follow` reads the view: the page must still get the view
    in which it has finished, not stay at "Answering…" (it did, when the two were read apart)."""
    import threading

    from model.session import AnswerSettings
    from omni_demo.playback import PlayerFeed
    from omni_demo.timings import TurnTiming
    from omni_demo.view import Answer

    live = new_session(loaded, worker)
    answer = Answer(TurnTiming(1, "typed", time.time()), AnswerSettings(text_only=True), PlayerFeed(1))
    with live.view:
        live.view.answer = answer
    read, finisher = live.view.snapshot, []

    def snapshot(status):
        view = read(status)
        if not finisher:  # the worker finishes the answer now, while this view is being read
            finisher.append(threading.Thread(target=live.view.finish_answer, args=(answer, 300.0)))
            finisher[0].start()
            finisher[0].join(0.3)
        return view

    live.view.snapshot = snapshot
    views = list(live.follow(poll_seconds=0.05))
    finisher[0].join(5)
    assert answer.finished and views[-1].status != "💭 Answering…"


def test_each_answer_is_played_by_the_pace_of_the_last_ones_and_reports_when_it_played(loaded, worker):
    """The page's player and the server's copy of it plan each answer with the same numbers: the pace of the
    answers before, sent in the feed's header. The figures say when the first audio played by that plan."""
    live = new_session(loaded, worker)
    live.update(max_new_tokens=64)  # several chunks: a pace can be measured
    live.send("Hello.", [])
    finish(live, worker)
    first = live.answer
    assert first.feed.pace is None and first.clock.pace is None  # the server's first answer: nothing known
    assert first.clock.measured_rate() is not None and len(first.chunks) >= 2
    timing = live.timings[-1]
    assert timing.first_audio_played == pytest.approx(
        timing.first_audio + first.clock.first_start - first.clock.first_arrival)
    assert timing.first_audio_played >= timing.first_audio
    live.send("Again.", [])
    finish(live, worker)
    second = live.answer
    pace = second.feed.pace
    assert pace is not None and second.clock.pace == pace
    assert second.feed.value().startswith(f"answer {second.feed.answer_id} pace {pace.rate:.4f} {pace.length:.3f}\n")
    assert pace.rate == pytest.approx(first.clock.measured_rate(), abs=1e-4)
    assert pace.length == pytest.approx(first.clock.produced, abs=1e-3)


def slow_pace() -> SpeechPace:
    """A server that has made speech far slower than it plays: a new answer's speech is held (up to 30 s) before
    it plays, so it would still be "playing" long after it was made."""
    return server_pace(0.01, made_after=10.0)


def could_not_answer(live: LiveSession) -> int:
    return sum(1 for m in live.chat if m.get("metadata", {}).get("title", "").endswith("Could not answer"))


def test_a_failure_mid_answer_stops_its_playback_and_a_later_stop_cuts_nothing(loaded, worker):
    """The model fails after some of an answer's speech was made: its playback stops with it (the page's
    player was told to stop), and a later Stop finds nothing to cut: the answer before it stays whole in the
    model's memory, and no second error follows."""
    live = LiveSession("tab", loaded, worker, pace=slow_pace())
    live.update(max_new_tokens=8, text_only=True)
    live.send("First question.", [])
    finish(live, worker)
    good = [r.tokens for r in engine(live).history if isinstance(r, AnswerTurn)]
    cache = engine(live).thinker.cache
    forward = cache.forward

    def failing_once_speech_is_made(module, embeds, *args, **kwargs):  # in a decode step the worker runs
        if live.answer.chunks and embeds.shape[1] == 1:
            cache.forward = forward
            raise RuntimeError("a fault in the decoder")
        return forward(module, embeds, *args, **kwargs)

    cache.forward = failing_once_speech_is_made
    live.update(max_new_tokens=400, text_only=False)
    live.send("Tell me a long story.", [])
    finish(live, worker)
    failed = live.answer
    assert failed.chunks and failed.failed and failed.feed.stopped  # speech had been made, then the fault
    assert not live.status().startswith("🔊") and failed.clock.playing_until() == 0.0
    live.stop()
    assert worker.idle(60)
    assert [r.tokens for r in engine(live).history if isinstance(r, AnswerTurn)] == good
    assert could_not_answer(live) == 1


def test_on_zero_gpu_a_cut_in_after_the_calls_last_event_keeps_the_answer(loaded, worker, zero_gpu_calls):
    """The user cuts in just after the answer's last event, before the call hands its final history back: the
    answer stays in the tab's history, and the next call sees one user turn after another answer."""
    zero = new_session(loaded, worker, "zero", zero_gpu=True, text_only=True)
    zero.send("Hello.", [])
    for _ in zero.follow():
        if zero.answer.done is not None and not zero.answer.stop_requested:
            zero.stop()
    assert zero.answer.stop_requested
    history = zero.model.history
    assert kinds(history) == ["user", "answer"] and history[-1].tokens == zero.answer.done.tokens
    zero.send("And then?", [])
    list(zero.follow())
    assert kinds(zero.model.history) == ["user", "answer", "user", "answer"]
    assert [len(r.history) for r, _ in zero_gpu_calls] == [0, 2]


def test_on_zero_gpu_refusals_and_failures_reach_the_user_as_they_would_locally(loaded, worker, zero_gpu_calls,
                                                                                 monkeypatch):
    """Through the package's boundary, an exception keeps only its class name: the model's refusals come out
    of the call as values, its failures are named, and the package's own messages (its quota) are shown."""
    import gradio as gr

    from omni_demo import gpu

    zero = new_session(loaded, worker, "zero", zero_gpu=True)
    zero.update(voice="Nobody")
    zero.send("Hello.", [])
    list(zero.follow())
    assert zero.chat[-1]["content"].startswith("Unknown voice 'Nobody'")
    zero.update(voice="Chelsie", text_only=True)
    respond = gpu.OmniSession.respond

    def broken(self, settings=None):
        raise RuntimeError("a fault in the decoder")
        yield

    monkeypatch.setattr(gpu.OmniSession, "respond", broken)
    zero.send("Hello again.", [])
    list(zero.follow())
    assert zero.chat[-1]["content"].startswith("The model failed on this turn (RuntimeError).")
    monkeypatch.setattr(gpu.OmniSession, "respond", respond)
    forked = gpu.run_turn

    def over_quota(request):  # what spaces' scheduler raises before the call starts
        raise gr.Error("You have exceeded your GPU quota (60s requested vs. 12s left).", title="ZeroGPU quota exceeded")
        yield

    monkeypatch.setattr(gpu, "run_turn", over_quota)
    zero.send("And now?", [])
    list(zero.follow())
    assert zero.chat[-1]["content"] == "You have exceeded your GPU quota (60s requested vs. 12s left)."
    monkeypatch.setattr(gpu, "run_turn", forked)
    zero.send("Finally.", [])
    list(zero.follow())
    assert kinds(zero.model.history) == ["user", "answer"] and zero.answer.done is not None
    assert could_not_answer(zero) == 3


def test_a_new_system_prompt_while_the_user_speaks_keeps_the_whole_turn(loaded, worker):
    """The prompt is applied by rebuilding the caches while part of a voice turn is in them: the turn is given
    again, whole, so the model hears all of it under the new prompt."""
    live = new_session(loaded, worker, text_only=True)
    assert speak(live, np.concatenate([silence(0.3), speech_48k(), speech_48k()])) == 0
    assert worker.idle(120) and engine(live).live_windows >= 2  # windows of the turn are in the caches
    live.update(system_prompt="You are brief.")
    assert speak(live, np.concatenate([speech_48k(), silence(1.2)])) == 1
    finish(live, worker)
    session = engine(live)
    assert session.system_prompt == "You are brief." and kinds(session.history) == ["live", "answer"]
    record, heard = session.history[0], live.answer.turn.whole_audio()
    np.testing.assert_array_equal(record.audio, heard[: len(record.audio)])
    assert len(heard) - len(record.audio) < 321
    assert session.thinker.ids.count(C.AUDIO_TOKEN_ID) == expected_audio_tokens(heard)


def test_a_live_turn_is_ended_while_the_model_can_still_answer_it(loaded, worker):
    """Someone talks on without a pause long enough to end the turn: the turn is ended at the longest the model
    can take (half its positions, the uploads' rule), with a notice, and answered; speech that goes on is the
    next turn. No answer is left without room (one token, "its 0 oldest turns were dropped")."""
    positions = 600
    live = LiveSession("long", loaded, worker, max_positions=positions)
    live.update(max_new_tokens=8, text_only=True, silence_seconds=1.5)
    talk = np.concatenate([silence(0.3), *[speech_48k()] * 8, silence(2.0)])  # about 25 s, no 1.5 s pause
    ended = speak(live, talk)
    finish(live, worker)
    session = engine(live)
    turns = [r for r in session.history if isinstance(r, LiveTurn)]
    notices = [m for m in live.chat if m.get("metadata", {}).get("title") == "ℹ️ Turn ended"]
    assert ended >= 3 and len(notices) == ended - 1  # ended at the bound, and the last by the pause
    assert turns and all(r.span <= 0.55 * positions for r in turns)  # about half (with the prompt's head): room to answer
    assert not any("its 0 oldest" in str(m["content"]) for m in live.chat)
    last = live.answer
    assert last.done is not None and not last.done.interrupted and len(last.tokens) >= 2


def test_a_message_sent_while_an_answer_plays_gets_its_own_turn_number_and_clip(loaded, worker):
    import soundfile

    live = LiveSession("tab", loaded, worker, pace=fast_pace())
    live.update(max_new_tokens=400)
    live.send("Tell me a long story.", [])
    first = live.answer
    deadline = time.monotonic() + 120
    while first.clock.heard() < 0.3 and time.monotonic() < deadline:
        time.sleep(0.02)
    live.update(max_new_tokens=8)
    live.send("And then?", [])  # cuts in on the first answer, whose timing is not written yet
    finish(live, worker)
    assert [t.index for t in live.timings] == [1, 2]
    clips = files(live, "assistant")
    assert len(clips) == len(set(clips)) == 2 and clips[0] == str(first.clip)
    assert soundfile.info(clips[0]).duration == pytest.approx(first.heard_at_stop, abs=0.05)


def test_clear_deletes_the_files_there_when_it_was_pressed_not_later_ones(loaded, worker):
    """Clear is pressed while the model is still busy with the tab: a voice turn that ends before the clear
    runs belongs to the new conversation and keeps its clip."""
    import threading
    from pathlib import Path

    live = new_session(loaded, worker, text_only=True)
    question = np.concatenate([silence(0.3), speech_48k(), silence(1.2)])
    assert speak(live, question) == 1
    finish(live, worker)
    old = files(live, "user")
    release = threading.Event()

    def still_busy():  # the tab's job still running when Clear is pressed
        while not release.is_set():
            time.sleep(0.01)
            yield

    worker.submit(live.key, still_busy())
    live.clear()
    assert speak(live, question) == 1
    release.set()
    finish(live, worker)
    new = files(live, "user")
    assert new and all(Path(path).exists() for path in new)
    assert not any(Path(path).exists() for path in old)
    assert kinds(engine(live).history) == ["live", "answer"]


def test_a_text_answer_read_in_full_stays_when_the_user_speaks_on_within_the_grace(loaded, worker):
    live = new_session(loaded, worker, text_only=True)
    assert speak(live, np.concatenate([silence(0.3), speech_48k(), silence(0.7)])) == 1
    read = live.answer
    deadline = time.monotonic() + 60
    while not read.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert read.finished and read.text
    assert speak(live, np.concatenate([silence(0.2), speech_48k(), silence(1.0)])) == 1  # within 1.5 s
    finish(live, worker)
    assert not read.retracted and live.answer is not read
    assert kinds(engine(live).history) == ["live", "answer", "live", "answer"]
    assert [t.index for t in live.timings] == [1, 2]


def test_one_tabs_last_speech_never_holds_another_tabs_answer(loaded, worker, monkeypatch):
    """Speech on its own thread (the CUDA default, forced here), its chunks held back: while tab A waits for its
    last speech, the model worker answers tab B."""
    import threading

    from model.engine import answer as answer_module
    from model.engine.speech_worker import SpeechWorker
    from model.families.qwen2_5_omni.vocoder import StreamingToken2Wav

    monkeypatch.setattr(answer_module, "start_speech", lambda stream, threaded=None, windows=False: SpeechWorker(stream))
    gate, decode = threading.Event(), StreamingToken2Wav._decode
    monkeypatch.setattr(StreamingToken2Wav, "_decode", lambda self, plan: gate.wait(300) and decode(self, plan))
    a, b = new_session(loaded, worker, "a"), new_session(loaded, worker, "b", text_only=True)
    a.send("Say something.", [])
    deadline = time.monotonic() + 120
    while a.answer.done is None and len(a.answer.tokens) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)  # until A's text is complete: what is left is its speech
    b.send("Hello.", [])
    deadline = time.monotonic() + 60
    while not b.answer.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert b.answer.finished and b.answer.text and not a.answer.finished
    finally:
        gate.set()
    finish(a, worker)
    assert a.answer.chunks and not a.answer.done.interrupted
