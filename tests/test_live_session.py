"""One tab's live conversation on the tiny model: microphone chunks in, turns, answers, barge-in, faults.

The handlers are called as Gradio calls them (48 kHz int16 chunks of real speech) and the model runs on
the real worker thread; only the browser is left out (tests/test_browser.py has it)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from speech import chunks, silence, speech_48k

from model import constants as C
from omni_demo.live import LiveSession, heard_tokens
from omni_demo.worker import ModelWorker


@pytest.fixture
def worker():
    w = ModelWorker(max_active=2)
    yield w
    w.stop()


def new_session(loaded, worker, key="tab", zero_gpu=False, **settings) -> LiveSession:
    live = LiveSession(key, loaded, worker, zero_gpu=zero_gpu)
    live.update(max_new_tokens=8, **settings)
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


def texts(live: LiveSession, role: str) -> list[str]:
    return [m["content"] for m in live.chat if m["role"] == role and isinstance(m["content"], str)]


def files(live: LiveSession, role: str) -> list[str]:
    return [m["content"]["path"] for m in live.chat if m["role"] == role and isinstance(m["content"], dict)]


def test_a_spoken_question_is_prefilled_while_spoken_and_answered(loaded, worker):
    live = new_session(loaded, worker)
    question = np.concatenate([silence(0.5), speech_48k(), speech_48k()])  # about 6 s of speech
    assert speak(live, question) == 0
    assert worker.idle(120)
    engine = live._engine
    assert engine is not None and engine._live.windows_done >= 2  # 2 s windows already in the cache
    assert speak(live, silence(1.5)) == 1  # the pause ends the turn and starts the answer
    finish(live, worker)
    voice, answer_clip = files(live, "user")[0], files(live, "assistant")[0]
    assert voice.endswith(".wav") and answer_clip.endswith(".wav")
    assert texts(live, "user")[0].startswith("🎙️ ")
    assert texts(live, "assistant")[0]  # streamed text
    timing = live.timings[-1]
    assert timing.kind == "voice" and 0 < timing.first_text <= timing.first_audio <= timing.total
    assert 0.55 < timing.silence < 1.0  # the 0.6 s pause (and one 0.2 s chunk at most) before the turn ended
    assert live.answer.feed.text.count("\npcm ") >= 1 and live.answer.feed.text.endswith("end\n")
    history = engine.history
    assert [r.kind for r in history] == ["live", "answer"]
    assert abs(len(history[0].payload[0]) / C.INPUT_SAMPLE_RATE - (6.4 + 0.3 + 0.6)) < 0.6


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
    assert texts(live, "assistant")[-1] and live._engine.turns == 1


def test_a_fault_inside_the_model_keeps_the_conversation(loaded, worker):
    live = new_session(loaded, worker, text_only=True)
    live.send("First question.", [])
    finish(live, worker)
    before = list(live._engine.thinker.ids)
    live.update(voice="Nobody", text_only=False)  # respond() raises: this checkpoint has no such voice
    live.send("Second question.", [])
    finish(live, worker)
    assert "Unknown voice" in live.chat[-1]["content"]
    live.update(voice="Chelsie")
    live.send("Third question.", [])
    finish(live, worker)
    assert live._engine.thinker.ids[: len(before)] == before  # the first exchange is still there
    assert [r.kind for r in live._engine.history] == ["user", "answer", "user", "answer"]


def test_speaking_during_an_answer_cuts_in(loaded, worker):
    live = new_session(loaded, worker)
    live.update(max_new_tokens=400)
    live.send("Tell me a long story.", [])
    deadline = time.monotonic() + 120
    while live.answer.clock.total == 0 and time.monotonic() < deadline:  # until its speech is playing
        time.sleep(0.05)
    assert live.answering
    first = live.answer
    live.update(max_new_tokens=8)  # the next answer (settings are taken per answer)
    assert speak(live, np.concatenate([speech_48k(), silence(1.0)])) == 1
    finish(live, worker)
    assert first.feed.text.endswith("stop\n") and first.heard_at_stop is not None  # the player was stopped
    cut = [m for m in live.chat if m.get("metadata", {}).get("title", "").startswith("✋ Interrupted")]
    assert cut == [first.message] and first.message["content"].endswith(" …")
    assert first.timing.interrupted and [t.interrupted for t in live.timings] == [True, False]
    history = live._engine.history
    assert [r.kind for r in history] == ["user", "answer", "live", "answer"]
    # The first answer is kept in the model's memory only as far as it was heard.
    assert history[1].payload == first.tokens[: heard_tokens(first, first.heard_at_stop)]
    assert len(history[1].payload) < len(first.tokens)


def test_tabs_are_isolated(loaded, worker):
    a, b = new_session(loaded, worker, "a", text_only=True), new_session(loaded, worker, "b", text_only=True)
    a.send("Apples are red.", [])
    speak(b, np.concatenate([silence(0.3), speech_48k(), silence(1.0)]))
    finish(a, worker)
    finish(b, worker)
    tokenizer = loaded.processor.tokenizer
    assert "Apples" in tokenizer.decode(a._engine.thinker.ids)
    assert "Apples" not in tokenizer.decode(b._engine.thinker.ids)
    assert C.AUDIO_TOKEN_ID in b._engine.thinker.ids and C.AUDIO_TOKEN_ID not in a._engine.thinker.ids
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


def test_on_zero_gpu_each_turn_is_one_pickled_call_that_answers_as_the_worker_does(loaded, worker, monkeypatch):
    """ZeroGPU runs a turn in a forked process: the request and every yield are pickled, and nothing else
    survives the call. The conversation must come out as the persistent worker's does."""
    import pickle

    from omni_demo import gpu

    requests = []
    run_turn = gpu.run_turn

    def forked(request):
        requests.append(request)
        for item in run_turn(pickle.loads(pickle.dumps(request))):
            yield pickle.loads(pickle.dumps(item))

    monkeypatch.setattr(gpu, "run_turn", forked)
    gpu.serve(loaded)
    zero = new_session(loaded, worker, "zero", zero_gpu=True, seed=3)
    local = new_session(loaded, worker, "local", seed=3)
    question = np.concatenate([silence(0.3), speech_48k(), silence(1.0)])
    for live in (zero, local):
        assert speak(live, question) == 1
    assert list(zero.follow()) and zero.answer.finished  # the GPU call runs inside the page's event
    list(local.follow())  # until its speech has played too: a message sent earlier would cut in
    finish(local, worker)
    for live in (zero, local):
        assert live.send("And then?", []) is None
    list(zero.follow())
    finish(local, worker)

    assert len(requests) == 2 and zero._engine is None  # no caches outside the calls
    assert [len(r.history) for r in requests] == [0, 2] and requests[0].audio is not None
    ours, theirs = zero._history, local._engine.history
    assert [r.kind for r in ours] == [r.kind for r in theirs] == ["live", "answer", "user", "answer"]
    assert [r.payload for r in ours if r.kind == "answer"] == [r.payload for r in theirs if r.kind == "answer"]
    assert [m["content"] for m in zero.chat if isinstance(m["content"], str)] == [
        m["content"] for m in local.chat if isinstance(m["content"], str)
    ]
    assert gpu.turn_seconds(requests[1]) >= gpu.turn_seconds(requests[0]) > 20


def test_an_answer_past_the_turn_limit_is_stopped_and_the_session_goes_on(loaded, worker):
    live = LiveSession("slow", loaded, worker, turn_timeout_s=1.0)
    live.update(max_new_tokens=1000, text_only=True)
    started = time.monotonic()
    live.send("Tell me everything.", [])
    finish(live, worker)
    assert time.monotonic() - started < 30  # not 1000 tokens
    assert live.answer.timed_out and live.chat[-1]["metadata"]["title"].endswith("Stopped")
    assert live._engine.history[-1].kind == "answer" and 0 < len(live._engine.history[-1].payload) < 1000
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
    engine = live._engine
    step = engine.thinker.step

    def out_of_memory(token):
        engine.thinker.step = step  # once
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    engine.thinker.step = out_of_memory
    live.send("Second question.", [])
    finish(live, worker)
    assert "OutOfMemoryError" in live.chat[-1]["content"] and "conversation is kept" in live.chat[-1]["content"]
    assert [r.kind for r in live._engine.history] == ["user", "answer"]  # the failed turn is gone
    live.send("Third question.", [])
    finish(live, worker)
    assert [r.kind for r in live._engine.history] == ["user", "answer", "user", "answer"]
    assert live.answer.tokens
