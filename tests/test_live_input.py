"""Live input: 2 s windows prefilled while the user speaks, against transformers fed the same features.

The live path computes each window's log-mel from that window alone (see model/engine/live_input.py), so
its reference is transformers' generate on the same prompt with `input_features` = those per-window
features, and the turn's canonical pictures (the 2 fps grid its record keeps).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_session import assert_same_choices, greedy_settings, run

from model import constants as C
from model.engine.encode import live_audio_features
from model.families.qwen2_5_omni.reference import TalkerSampling, reference_generate
from model.inputs.conversation import Audio, Conversation, Video
from model.inputs.media import load_audio, load_video
from model.inputs.media import VideoClip
from model.session import LiveTurn, OmniSession

CHUNK_SAMPLES = 1600  # 0.1 s, like a browser's microphone chunks


def feed_live(session: OmniSession, audio: np.ndarray | None, frames=None, timestamps=None) -> None:
    """Feeds audio in 0.1 s chunks and each frame once its time has come, in real-time order."""
    fed = 0
    total = len(audio) if audio is not None else int((timestamps[-1] + 0.5) * C.INPUT_SAMPLE_RATE)
    for start in range(0, total, CHUNK_SAMPLES):
        now = start / C.INPUT_SAMPLE_RATE
        while frames is not None and fed < len(frames) and timestamps[fed] <= now + 1e-9:
            session.feed_frame(frames[fed], float(timestamps[fed]))
            fed += 1
        if audio is not None:
            session.feed_audio(audio[start : start + CHUNK_SAMPLES])
    while frames is not None and fed < len(frames):
        session.feed_frame(frames[fed], float(timestamps[fed]))
        fed += 1


def canonical_conversation(record: LiveTurn) -> Conversation:
    """The live turn as transformers gets it: its sound and its pictures on the 2 fps grid, as one video."""
    conversation = Conversation()
    if not record.frames:
        conversation.add_user(Audio(record.audio))
        return conversation
    frames = np.stack([frame for frame, _ in record.frames])
    times = np.array([t for _, t in record.frames])
    sound = record.audio if len(record.audio) else None
    conversation.add_user(Video(VideoClip(frames, times, C.VIDEO_FPS, sound)))
    return conversation


def compare(loaded, harness, session: OmniSession, expected_frames: int | None = None):
    session.end_user_turn()
    record = session.history[-1]
    assert isinstance(record, LiveTurn)
    if expected_frames is not None:
        assert len(record.frames) == expected_frames
    _, done = run(session, greedy_settings(harness))
    reference = reference_generate(
        loaded,
        canonical_conversation(record),
        max_new_tokens=harness.max_new_tokens,
        talker=TalkerSampling(greedy=True),
        noise_seed=harness.noise_seed,
        audio_features=live_audio_features(loaded.processor, record.audio) if len(record.audio) else None,
    )
    assert session.thinker.ids[: len(reference.prompt_ids)] == reference.prompt_ids
    assert_same_choices(done.tokens, reference.thinker_tokens, done.token_margins)
    if done.tokens == reference.thinker_tokens:
        assert_same_choices(done.codes, reference.talker_codes, done.code_margins)
    return done


def test_live_voice_equals_transformers_on_the_same_features(loaded, harness, assets):
    audio = load_audio(assets / "question.wav")
    session = OmniSession(loaded)
    feed_live(session, audio)
    compare(loaded, harness, session)


def test_live_camera_and_voice_equal_transformers(loaded, harness, assets):
    clip = load_video(assets / "clip_with_audio.mp4")
    session = OmniSession(loaded)
    feed_live(session, clip.audio, clip.frames, clip.timestamps)
    compare(loaded, harness, session, expected_frames=len(clip.frames))


def test_live_camera_without_sound_equals_transformers(loaded, harness, assets):
    clip = dataclasses.replace(load_video(assets / "clip_silent.mp4", with_audio=False), audio=None)
    session = OmniSession(loaded)
    feed_live(session, None, clip.frames, clip.timestamps)
    compare(loaded, harness, session, expected_frames=len(clip.frames))


def test_windows_are_prefilled_while_the_user_speaks(loaded, assets):
    clip = load_video(assets / "clip_with_audio.mp4")  # 4 s: two complete windows
    audio = np.concatenate([clip.audio, np.zeros(32000, np.float32)])[: 2 * 32000 + 800]  # + 0.05 s
    session = OmniSession(loaded)
    feed_live(session, audio, clip.frames, clip.timestamps)
    before_end = session.thinker.ids.count(C.AUDIO_TOKEN_ID), session.thinker.ids.count(C.VIDEO_TOKEN_ID)
    assert before_end == (100, 560), "both complete windows must be in the cache before the turn ends"
    session.end_user_turn()
    # Only the 0.05 s left over and the closing tokens were added at the end.
    assert session.thinker.ids.count(C.AUDIO_TOKEN_ID) == 100 + 1


def test_whole_clip_features_differ_only_slightly(loaded, assets):
    """Why the live reference uses the live features: the whole-clip log-mel's floor is a clip statistic."""
    audio = load_audio(assets / "question.wav")
    session = OmniSession(loaded)
    feed_live(session, audio)
    session.end_user_turn()
    live = live_audio_features(loaded.processor, session.history[-1].audio)
    whole, _ = loaded.processor._audio_features([audio])
    whole = whole["input_features"][0, :, : live.shape[-1]]
    difference = (whole - live).abs()
    assert difference.max() < 0.5 and difference.mean() < 0.05


def test_empty_live_turn_is_refused(loaded):
    session = OmniSession(loaded)
    with pytest.raises(ValueError, match="no audio and no frames"):
        session.end_user_turn()
