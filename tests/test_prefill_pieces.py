"""A whole turn added in steps (OmniSession.adding_user_turn): the processor (on the handler's thread in the
app), the vision encoder a few frame pairs at a time (PromptEncoder.embedding_media), the prefill in pieces
(ThinkerStream.prefill_pieces). The model worker runs the other conversations' steps between them, so an
upload never holds their speech, and what lands in the caches is the one-pass prefill's (up to float
rounding: each piece attends to the ones before it through the cache). A restore feeds its live turns a
window's time per step likewise."""

from __future__ import annotations

import math
import threading
import time
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from test_batched_step import answer_settings
from test_live_session import new_session
from test_session import assert_same_choices

from model.engine import encode as encode_module
from model.engine import session as session_module
from model.engine.history import LiveTurn
from model.inputs import cases
from model.inputs.conversation import Image, Text
from model.inputs.media import load_image
from model.session import OmniSession
from omni_demo.worker import ModelWorker

WHOLE = 10**6  # a piece larger than any turn here: one forward pass
CLOSE = {"rtol": 1e-4, "atol": 1e-4}  # float rounding of attention over a cache instead of within one pass


@pytest.fixture(params=["qwen2.5", "qwen3"])
def family(request):
    return request.getfixturevalue("loaded" if request.param == "qwen2.5" else "qwen3_loaded")


def parts_of(case: str):
    return cases.SINGLE_TURN_CASES[case]().turns[0].parts


def prefilled(loaded, parts, piece: int) -> tuple[OmniSession, int]:
    """A session with the turn prefilled in pieces of `piece` positions, and how many steps that took."""
    session = OmniSession(loaded, prefill_piece=piece)
    steps = sum(1 for _ in session.adding_user_turn(*parts))
    return session, steps


def answered(session: OmniSession):
    return [e for e in session.respond(answer_settings(8))][-1]


@pytest.mark.parametrize("case", ["image", "video_with_sound"])  # vision (Qwen3-Omni's deepstack), sound
@pytest.mark.parametrize("piece", [7, 64])
def test_a_turn_in_pieces_is_the_turn_in_one_pass(family, case, piece):
    parts = parts_of(case)
    whole, none = prefilled(family, parts, WHOLE)
    pieces, steps = prefilled(family, parts, piece)
    length = whole.thinker.length
    assert none == 1 and length > piece  # the processor's step
    assert steps == 1 + math.ceil(length / piece)  # the processor's, the encoders', one between two pieces
    assert pieces.thinker.ids == whole.thinker.ids
    assert pieces.thinker.cache.get_seq_length() == length
    torch.testing.assert_close(pieces._logits, whole._logits, **CLOSE)
    for ours, theirs in zip(pieces.thinker.cache.layers, whole.thinker.cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, **CLOSE)
        torch.testing.assert_close(ours.values, theirs.values, **CLOSE)
    for ours, theirs in zip(pieces.thinker.talker_states, whole.thinker.talker_states, strict=True):
        torch.testing.assert_close(ours, theirs, **CLOSE)  # what the talker speaks from (Qwen3: a layer's states)
    ours, theirs = answered(pieces), answered(whole)
    assert_same_choices(ours.tokens, theirs.tokens, ours.token_margins)
    if ours.tokens == theirs.tokens:
        assert_same_choices(ours.codes, theirs.codes, ours.code_margins)


def test_a_turn_closed_between_pieces_leaves_the_conversation_as_it_was(qwen3_loaded):
    """A tab closed (or a job cancelled) in the middle of an upload's prefill: the caches hold nothing of it,
    and the conversation goes on as if it had never been sent."""
    parts = parts_of("image")
    kept, fresh = OmniSession(qwen3_loaded, prefill_piece=16), OmniSession(qwen3_loaded, prefill_piece=16)
    for session in (kept, fresh):
        session.add_user_turn(Text("Hello there."))
        answered(session)
    # What the caches may hold afterwards: the conversation so far and its last answer's closing token.
    expected, history = kept.thinker.ids + kept._closing, kept.history
    steps = kept.adding_user_turn(*parts)
    for _ in range(4):  # the processor, the encoders, then two pieces in the cache
        next(steps)
    steps.close()
    assert kept.thinker.ids == expected and kept.thinker.cache.get_seq_length() == len(expected)
    assert kept.history == history
    for session in (kept, fresh):
        session.add_user_turn(*parts)
    assert kept.thinker.ids == fresh.thinker.ids
    ours, theirs = answered(kept), answered(fresh)
    assert ours.tokens == theirs.tokens and ours.codes == theirs.codes


@pytest.mark.parametrize("case", ["video_with_sound", "two_images"])
def test_vision_encoded_a_few_frames_at_a_time_is_vision_encoded_at_once(family, case):
    """The vision encoders attend within a frame pair, so a video cut between pairs (images one by one)
    gives what one call gives, Qwen3-Omni's deepstack features too."""
    session = OmniSession(family)
    if case == "two_images":
        picture = load_image(cases.PICTURE)
        parts = [Image(picture), Image(picture.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)), Text("Which differ?")]
    else:
        parts = parts_of(case)
    media = encode_module.turn_media(family.processor, parts)
    inputs = family.processor(text=session.template.turn_text(parts, first=True), use_audio_in_video=media.interleave,
                              media=media.inputs)
    grids = inputs.get("video_grid_thw", inputs.get("image_grid_thw"))
    pixels = int(grids.prod(-1).sum())
    per_pair = int(grids[0, 1] * grids[0, 2])
    embedding = session.encoder.embedding_media(inputs["input_ids"], inputs, rows=per_pair)
    steps = 0
    try:
        while True:
            next(embedding)
            steps += 1
    except StopIteration as done:
        embeds, deepstack = done.value
    assert steps == pixels // per_pair - 1 >= 1  # a frame pair (an image) a step
    whole, whole_deepstack = session.encoder.media_embeddings(inputs["input_ids"], inputs)
    torch.testing.assert_close(embeds, whole, **CLOSE)
    assert (deepstack is None) == (whole_deepstack is None)
    for ours, theirs in zip(deepstack or [], whole_deepstack or [], strict=True):
        torch.testing.assert_close(ours, theirs, **CLOSE)


def test_the_worker_answers_others_between_an_uploads_pieces(loaded, monkeypatch):
    """Through the app's own sessions and worker: tab B is answering when tab A sends a video. The video's
    frames go through the processor on the sending thread, not the model's; then the model's work on it
    shows one piece per round (a few frame pairs through the vision encoder, or a piece of the prefill) with
    B's decode step beside it, until B's answer is done; B's answer is what it is alone."""
    monkeypatch.setattr(session_module, "PREFILL_PIECE", 32)
    monkeypatch.setattr(encode_module, "VISION_PIECE", 1)  # a frame pair per step
    forwards: list[int] = []  # positions of each thinker forward pass, in order (1: a decode step; 0: vision)
    language_model = loaded.model.thinker.model.language_model
    hooks = [
        language_model.register_forward_pre_hook(
            lambda module, args, kwargs: forwards.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
        ),
        loaded.model.thinker.model.visual.register_forward_pre_hook(lambda module, args: forwards.append(0)),
    ]
    processed_on: list[threading.Thread] = []
    media_inputs = type(loaded.processor).media_inputs

    def watched(processor, *args, **kwargs):
        processed_on.append(threading.current_thread())
        return media_inputs(processor, *args, **kwargs)

    monkeypatch.setattr(type(loaded.processor), "media_inputs", watched)
    worker = ModelWorker(max_active=2)
    try:
        alone = new_session(loaded, worker, "alone", text_only=True)
        alone.update(max_new_tokens=24)
        alone.send("Tell me about the sea.", [])
        assert worker.idle(120)
        a = new_session(loaded, worker, "a", text_only=True)
        b = new_session(loaded, worker, "b", text_only=True)
        b.update(max_new_tokens=24)
        b.send("Tell me about the sea.", [])
        deadline = time.monotonic() + 60
        while not b.answer.tokens and time.monotonic() < deadline:
            time.sleep(0.005)
        start = len(forwards)
        a.send("What is in this video?", [str(cases.ASSETS / "clip_with_audio.mp4")])
        assert worker.idle(300)
    finally:
        for hook in hooks:
            hook.remove()
        worker.stop()
    assert a.answer.finished and a.answer.tokens and b.answer.tokens == alone.answer.tokens
    assert processed_on and worker._thread not in processed_on
    log = forwards[start:]
    pieces = [i for i, n in enumerate(log) if n != 1]  # A's work; B's and A's decode steps are 1 position each
    assert log.count(0) >= 3 and [log[i] for i in pieces if log[i]][:-1] == [32] * (len(pieces) - log.count(0) - 1)
    b_last = max(i for i, n in enumerate(log[: pieces[-1]]) if n == 1)
    between = [log[i + 1 : j].count(1) for i, j in pairwise(pieces) if j <= b_last]
    assert len(between) >= 5 and all(count >= 1 for count in between)  # B never waited for two pieces


def test_a_restore_feeds_its_live_turns_a_window_per_step(loaded, assets):
    """A rebuilt conversation's live turn goes a window's time per worker step, and the caches it rebuilds are
    the ones the turn built live."""
    import soundfile

    sound, rate = soundfile.read(assets / "question.wav", dtype="float32")
    assert rate == 16000
    audio = np.concatenate([sound, sound, sound])  # 8.7 s: five windows
    live = OmniSession(loaded)
    for start in range(0, len(audio), 1600):
        live.feed_audio(audio[start : start + 1600])
    live.end_user_turn()
    answered(live)
    assert isinstance(live.history[0], LiveTurn)
    rebuilt = OmniSession(loaded)
    steps = sum(1 for _ in rebuilt.restoring(live.history))
    assert steps == math.ceil(len(audio) / 32000) + 1 + 1  # its windows, the turn's end, the answer
    assert rebuilt.thinker.ids == live.thinker.ids
    for ours, theirs in zip(rebuilt.thinker.cache.layers, live.thinker.cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, **CLOSE)
