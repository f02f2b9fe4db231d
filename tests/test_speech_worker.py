"""token2wav on its own thread (model/engine/speech_worker.py) gives the audio a decode between the steps
gives, whatever the batches and timing the codes arrive in; it hands its errors over and never outlives its
answer."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import constants as C
from model.engine.events import AnswerDone, AnswerSettings, AudioChunk
from model.engine.sampling import Sampling
from model.engine.speech_worker import InlineSpeech, SpeechWorker
from model.families.qwen2_5_omni.vocoder import StreamingToken2Wav
from model.inputs.conversation import Text
from model.session import OmniSession

FAST = {"solver": "euler", "num_steps": 2}  # one DiT pass per window: the hand-over, not the solver, is tested
CODES = torch.randint(0, 8193, (130,), generator=torch.Generator().manual_seed(5)).tolist()


def speech(loaded):
    stream = StreamingToken2Wav(
        loaded.model.token2wav, loaded.voices["Chelsie"], noise=3, first_chunk_frames=24, max_chunk_frames=96, **FAST
    )
    return stream


def chunks_of(rest) -> list[np.ndarray]:
    """The chunks `rest` gives, without its "nothing yet" (None)."""
    return [chunk for chunk in rest if chunk is not None]


def no_worker_left() -> bool:
    deadline = time.monotonic() + 5
    while any(t.name == "token2wav" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not any(t.name == "token2wav" for t in threading.enumerate())


@pytest.fixture(scope="module")
def inline_audio(loaded):
    inline = InlineSpeech(speech(loaded))
    chunks = []
    for code in CODES:
        inline.feed([code])
        chunks += inline.ready()
    inline.finish()
    chunks += chunks_of(inline.rest(threading.Event()))
    return chunks


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, len(CODES) - 1), max_size=12, unique=True), pauses=st.lists(st.booleans(), min_size=13, max_size=13))
def test_the_thread_cuts_the_same_chunks_however_codes_arrive(loaded, inline_audio, cuts, pauses):
    worker = SpeechWorker(speech(loaded))
    chunks = []
    try:
        edges = [0, *sorted(cuts), len(CODES)]
        for (start, end), pause in zip(itertools.pairwise(edges), pauses):
            worker.feed(CODES[start:end])
            if pause:
                time.sleep(0.02)  # let the worker run ahead of, or behind, the feeding
            chunks += worker.ready()
        worker.finish()
        chunks += chunks_of(worker.rest(threading.Event()))
    finally:
        worker.stop()
    assert worker.ended
    assert len(chunks) == len(inline_audio)
    for ours, theirs in zip(chunks, inline_audio):
        np.testing.assert_array_equal(ours, theirs)


def test_a_worker_error_reaches_the_answer(loaded):
    worker = SpeechWorker(speech(loaded))
    try:
        worker.feed([C.DIT_NUM_EMBEDS + 5])  # a code the DiT cannot embed
        worker.finish()
        with pytest.raises(ValueError, match="token2wav codes"):
            list(worker.rest(threading.Event()))
    finally:
        worker.stop()
    assert no_worker_left()


class GatedChunks:
    """The real stream, with each chunk's decode held until the test lets it go: what the thread does while a
    chunk is being made, and how many it starts, can be seen."""

    def __init__(self, stream: StreamingToken2Wav):
        self.stream, self.started, self.go = stream, threading.Semaphore(0), threading.Event()
        self.decodes = 0
        decode = stream._decode

        def gated(plan):
            self.decodes += 1
            self.started.release()
            self.go.wait()
            return decode(plan)

        stream._decode = gated


def test_a_cut_in_waits_for_one_chunk_at_most_not_for_the_backlog(loaded):
    """Codes far ahead of the speech (300 of them: several chunks ready): stopping the worker while it decodes
    a chunk lets that one end and starts no other."""
    gate = GatedChunks(speech(loaded))
    worker = SpeechWorker(gate.stream)
    worker.feed((CODES * 3)[:300])
    worker.finish()
    assert gate.started.acquire(timeout=60)  # the first chunk is being decoded
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    time.sleep(0.2)  # the stop is asked for while that chunk is still being made
    gate.go.set()
    stopper.join(60)
    assert not stopper.is_alive() and no_worker_left()
    assert gate.decodes == 1


def test_waiting_for_the_last_chunks_hands_control_back(loaded):
    """The answer's thread asks for the rest of the speech while a chunk is being made: it gets None (nothing
    yet) instead of waiting for the chunk, so the thread can serve other conversations; then every chunk."""
    gate = GatedChunks(speech(loaded))
    worker = SpeechWorker(gate.stream)
    worker.feed(CODES)
    worker.finish()
    rest = worker.rest(threading.Event())
    first = []
    asker = threading.Thread(target=lambda: first.append(next(rest)))
    asker.start()
    asker.join(5)
    try:
        assert not asker.is_alive() and first == [None]
    finally:
        gate.go.set()
    asker.join(60)
    chunks = chunks_of(rest)
    worker.stop()
    reference = InlineSpeech(speech(loaded))
    reference.feed(CODES)
    reference.finish()
    expected = reference.ready()
    assert len(chunks) == len(expected) >= 2
    for ours, theirs in zip(chunks, expected):
        np.testing.assert_array_equal(ours, theirs)


def answer(loaded, thread: bool, interrupt_after: int | None = None):
    session = OmniSession(loaded)
    session.add_user_turn(Text("Say something."))
    settings = AnswerSettings(
        max_new_tokens=20,
        min_new_tokens=20,
        talker_min_new_tokens=80,
        talker_max_new_tokens=80,
        talker=Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
        noise_seed=1,
        speech_thread=thread,
        **FAST,
    )
    audio, done = [], None
    for event in session.respond(settings):
        if isinstance(event, AudioChunk):
            audio.append(event.samples)
            if interrupt_after is not None and len(audio) == interrupt_after:
                session.interrupt()
        elif isinstance(event, AnswerDone):
            done = event
    return audio, done


def test_an_answer_speaks_the_same_with_and_without_the_thread(loaded):
    inline, inline_done = answer(loaded, thread=False)
    threaded, threaded_done = answer(loaded, thread=True)
    assert threaded_done.codes == inline_done.codes and len(inline_done.codes) == 80
    assert len(threaded) == len(inline) >= 3
    np.testing.assert_array_equal(np.concatenate(threaded), np.concatenate(inline))
    assert threaded_done.timings.audio_seconds == pytest.approx(len(np.concatenate(inline)) / C.OUTPUT_SAMPLE_RATE)
    assert no_worker_left()


def test_cutting_in_stops_the_thread_and_the_speech(loaded):
    _, full = answer(loaded, thread=True)
    audio, done = answer(loaded, thread=True, interrupt_after=1)
    assert done.interrupted
    assert sum(len(a) for a in audio) < full.timings.audio_seconds * C.OUTPUT_SAMPLE_RATE
    assert no_worker_left()
