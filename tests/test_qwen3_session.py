"""The streaming engine on the tiny Qwen3-Omni against transformers' `Qwen3OmniMoeForConditionalGeneration`
on the same weights (greedy thinker, talker and code predictor): the same tokens, every frame's 16 codes,
and the waveform that code2wav gives for the whole answer, within a stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.engine.sampling import Sampling
from model.families.qwen3_omni import loading as Q3
from model.families.qwen3_omni.reference import reference_generate_qwen3
from model.families.qwen3_omni.vocoder import StreamingCode2Wav
from model.inputs import cases
from model.inputs.conversation import Audio, Conversation, Image, Text, Video
from model.inputs.media import VideoClip, load_audio, load_image, load_video
from model.session import AnswerDone, AnswerSettings, AudioChunk, OmniSession

TOKENS, CODES = 12, 40  # the thinker's cap (random weights never choose EOS); the talker's, never reached
# code2wav streamed vs one call over the whole answer: the pre-transformer's cache sums in another order
# (measured 80 dB on this checkpoint, model/families/qwen3_omni/vocoder.py); 60 dB leaves room across machines.
MIN_SNR_DB = 60.0


def settings_for(voice: str = "Ethan", **overrides) -> AnswerSettings:
    settings = AnswerSettings(
        voice=voice,
        max_new_tokens=TOKENS,
        talker_max_new_tokens=CODES,
        talker=Sampling(greedy=True, repetition_penalty=1.05),  # transformers' generate keeps its penalty
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def conversation(*parts) -> Conversation:
    result = Conversation(Q3.SYSTEM_PROMPT)
    result.add_user(*parts)
    return result


def answer(session: OmniSession, settings: AnswerSettings) -> tuple[AnswerDone, np.ndarray]:
    events = list(session.respond(settings))
    chunks = [e.samples for e in events if isinstance(e, AudioChunk)]
    return events[-1], np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def snr_db(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(reference**2) / max(np.mean((ours - reference) ** 2), 1e-30)))


def assert_same_answer(done: AnswerDone, wave: np.ndarray, reference) -> None:
    """The same tokens, every frame's 16 codes, and the waveform within the tolerance. The tiny talker ends
    its speech when the text is over (model/families/qwen3_omni/tiny.py shape_talker): one frame per text token fed,
    one for the text's end, then EOS."""
    assert done.tokens == reference.thinker_tokens
    assert done.codes == reference.talker_codes
    assert len(done.codes) == len(done.tokens) and all(len(frame) == 16 for frame in done.codes)
    assert len(wave) == len(reference.waveform) == len(done.codes) * 1920 - 555
    assert snr_db(wave, reference.waveform) >= MIN_SNR_DB


@pytest.mark.parametrize(
    ("voice", "parts"),
    [("Ethan", lambda: [Text(cases.FIRST_QUESTION)]), ("Aiden", lambda: [Audio(load_audio(cases.SPOKEN_QUESTION))])],
    ids=["text", "audio"],
)
def test_a_turn_is_transformers_answer(qwen3_loaded, voice, parts):
    reference = reference_generate_qwen3(qwen3_loaded, conversation(*parts()), voice=voice, max_new_tokens=TOKENS, talker_max_new_tokens=CODES)
    session = OmniSession(qwen3_loaded)
    session.add_user_turn(*parts())
    assert session.thinker.ids == reference.prompt_ids
    assert_same_answer(*answer(session, settings_for(voice)), reference)


def test_a_second_turn_and_a_restored_conversation_are_transformers(qwen3_loaded):
    """The talker's prompt holds every user turn and no answer; a restore rebuilds the same caches."""
    question = Audio(load_audio(cases.SPOKEN_QUESTION))
    session = OmniSession(qwen3_loaded)
    session.add_user_turn(question)
    first, _ = answer(session, settings_for("Chelsie"))
    session.add_user_turn(Text(cases.FOLLOW_UP))
    history = session.history
    second, wave = answer(session, settings_for("Chelsie"))

    earlier = conversation(question)
    earlier.add_assistant(first.text)
    earlier.add_user(Text(cases.FOLLOW_UP))
    reference = reference_generate_qwen3(qwen3_loaded, earlier, voice="Chelsie", max_new_tokens=TOKENS, talker_max_new_tokens=CODES)
    assert_same_answer(second, wave, reference)

    restored = OmniSession(qwen3_loaded)
    restored.restore(history)
    again, again_wave = answer(restored, settings_for("Chelsie"))
    assert (again.tokens, again.codes) == (second.tokens, second.codes)
    np.testing.assert_array_equal(again_wave, wave)


def test_a_text_only_answer_is_the_thinkers(qwen3_loaded):
    reference = reference_generate_qwen3(qwen3_loaded, conversation(Text(cases.FIRST_QUESTION)), text_only=True, max_new_tokens=TOKENS)
    session = OmniSession(qwen3_loaded)
    session.add_user_turn(Text(cases.FIRST_QUESTION))
    done, wave = answer(session, settings_for(text_only=True))
    assert done.tokens == reference.thinker_tokens and done.codes == [] and len(wave) == 0


def test_the_first_audio_leaves_after_the_first_frames(qwen3_loaded):
    """Speech is handed out while the talker goes on: the first chunk is the first 4 frames' audio."""
    session = OmniSession(qwen3_loaded)
    session.add_user_turn(Text(cases.FIRST_QUESTION))
    events = list(session.respond(settings_for(max_new_tokens=24)))
    chunks = [e.samples for e in events if isinstance(e, AudioChunk)]
    assert [len(c) for c in chunks] == [4 * 1920 - 555, 12 * 1920, 8 * 1920]  # 4, 12, then the last 8 frames


MEDIA_CASES = {
    "image": lambda: [Image(load_image(cases.PICTURE)), Text("What is in this picture?")],
    "silent_video": lambda: [Video(load_video(cases.VIDEO_SILENT, with_audio=False)), Text("What happens in it?")],
    "video_with_sound": lambda: [Video(load_video(cases.VIDEO_WITH_SOUND))],
    "audio_and_image": lambda: [Audio(load_audio(cases.SPOKEN_QUESTION)), Image(load_image(cases.PICTURE))],
}


@pytest.mark.parametrize("case", list(MEDIA_CASES))
def test_pictures_are_transformers_answer(qwen3_loaded, case):
    """The vision encoder's deepstack features reach the thinker's first layers; the talker reads the
    pictures' layer-24 states at transformers' talker positions (for a video with its sound, those of a
    rule that is not told the sound is interleaved: transformers' generate never passes it the flag)."""
    reference = reference_generate_qwen3(
        qwen3_loaded, conversation(*MEDIA_CASES[case]()), max_new_tokens=TOKENS, talker_max_new_tokens=CODES
    )
    session = OmniSession(qwen3_loaded)
    session.add_user_turn(*MEDIA_CASES[case]())
    assert session.thinker.ids == reference.prompt_ids
    assert_same_answer(*answer(session, settings_for()), reference)


@pytest.fixture(scope="module")
def whole_decode(qwen3_loaded):
    torch.manual_seed(0)
    frames = torch.randint(0, 2048, (1, 16, 90))
    with torch.no_grad():
        wave = qwen3_loaded.model.code2wav(frames)[0, 0].numpy()
    return frames[0].T.tolist(), wave


@pytest.fixture(scope="module")
def one_by_one(qwen3_loaded, whole_decode) -> bytes:
    """The audio of the frames fed one at a time, the finest arrival."""
    stream = StreamingCode2Wav(qwen3_loaded.model.code2wav)
    chunks = [chunk for frame in whole_decode[0] for chunk in stream.feed([frame])] + stream.flush()
    return np.concatenate(chunks).tobytes()


@settings(max_examples=12, deadline=None)
@given(arrivals=st.lists(st.integers(1, 20), min_size=1, max_size=40))
def test_code2wav_streamed_in_any_arrival_sizes_is_one_whole_decode(qwen3_loaded, whole_decode, one_by_one, arrivals):
    """However the frames arrive, the chunks are cut by the schedule alone (bit for bit the same audio) and
    together they are the whole decode, sample for sample in length and within the tolerance in value."""
    frames, whole = whole_decode
    stream, chunks, at = StreamingCode2Wav(qwen3_loaded.model.code2wav), [], 0
    for size in arrivals:
        chunks += stream.feed(frames[at : at + size])
        at += size
    chunks += stream.feed(frames[at:])
    chunks += stream.flush()
    wave = np.concatenate(chunks)
    assert len(chunks[0]) == 4 * 1920 - 555
    assert len(wave) == len(whole)
    assert snr_db(wave, whole) >= MIN_SNR_DB
    assert wave.tobytes() == one_by_one


# ---- live input: the audio encoder's 8 s groups --------------------------------------------------------


def speech_like(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)


@settings(max_examples=6, deadline=None)
@given(
    seconds=st.sampled_from([1.0, 2.0, 5.3, 8.0, 9.7, 16.4]),
    chunks=st.lists(st.integers(160, 24_000), min_size=1, max_size=6),
)
def test_live_audio_in_any_chunks_is_the_whole_turns_encoding(qwen3_loaded, seconds, chunks):
    """The audio encoder attends within 8 s groups, so a window prefilled while its group still grows is
    redone: once the turn ends the cache is what transformers gives for the whole turn's audio (its log-mel
    computed per 2 s window, as on the live path), whatever the chunks, the same answer."""
    from model.engine.encode import live_audio_features

    audio = speech_like(seconds, seed=int(seconds * 10))
    session, at, turn = OmniSession(qwen3_loaded), 0, 0
    while at < len(audio):
        size = chunks[turn % len(chunks)]
        session.feed_audio(audio[at : at + size])
        at, turn = at + size, turn + 1
    session.end_user_turn()
    done, wave = answer(session, settings_for())

    kept = session.history[0].audio
    reference = reference_generate_qwen3(
        qwen3_loaded,
        conversation(Audio(kept)),
        max_new_tokens=TOKENS,
        talker_max_new_tokens=CODES,
        audio_features=live_audio_features(qwen3_loaded.processor, kept),
    )
    assert session.thinker.ids[: len(reference.prompt_ids)] == reference.prompt_ids
    assert_same_answer(done, wave, reference)


def test_a_groups_windows_are_prefilled_together_once_its_8_s_are_in(qwen3_loaded):
    """No window is prefilled before its group is complete, so none is redone; what is left when the user
    stops (the open group and the closing) is one forward pass."""
    audio = speech_like(11.3, seed=3)
    session = OmniSession(qwen3_loaded)
    session.feed_audio(audio[: 8 * 16_000 - 1600])
    assert session.live_windows == 0
    session.feed_audio(audio[8 * 16_000 - 1600 : 8 * 16_000])
    assert session.live_windows == 4  # the first group, in one pass
    session.feed_audio(audio[8 * 16_000 :])
    assert session.live_windows == 4
    passes = []
    hook = qwen3_loaded.model.thinker.model.language_model.register_forward_hook(lambda *_: passes.append(1))
    try:
        session.end_user_turn()
    finally:
        hook.remove()
    assert len(passes) == 1 and session.windows_redone == 0


@pytest.mark.parametrize("sound", [True, False], ids=["camera_and_voice", "camera_only"])
def test_live_camera_is_transformers_answer_to_the_turns_video(qwen3_loaded, sound):
    """Frames and sound fed as they arrive; each 2 s window in Qwen3-Omni's layout (a frame pair, then the
    audio up to the next): the answer is transformers' to the turn as one video on the 2 fps grid."""
    from test_live_input import feed_live

    from model.engine.encode import live_audio_features

    clip = load_video(cases.VIDEO_WITH_SOUND) if sound else load_video(cases.VIDEO_SILENT, with_audio=False)
    session = OmniSession(qwen3_loaded)
    feed_live(session, clip.audio if sound else None, clip.frames, clip.timestamps)
    session.end_user_turn()
    done, wave = answer(session, settings_for())
    record = session.history[0]
    frames = np.stack([frame for frame, _ in record.frames])
    times = np.array([t for _, t in record.frames])
    turn = conversation(Video(VideoClip(frames, times, 2.0, record.audio if sound else None)))
    features = live_audio_features(qwen3_loaded.processor, record.audio) if sound else None
    reference = reference_generate_qwen3(qwen3_loaded, turn, max_new_tokens=TOKENS, talker_max_new_tokens=CODES, audio_features=features)
    assert session.thinker.ids[: len(reference.prompt_ids)] == reference.prompt_ids
    assert_same_answer(done, wave, reference)


def test_conversations_on_two_threads_read_their_own_layer_24(qwen3_loaded):
    """The talker's media states come from thinker layer 24, captured during each prefill: two conversations
    prefilling pictures on two threads at once each get their own, the answers they give alone."""
    import threading

    def answer_alone(case: str) -> tuple[list[int], list[list[int]]]:
        session = OmniSession(qwen3_loaded)
        session.add_user_turn(*MEDIA_CASES[case]())
        done, _ = answer(session, settings_for())
        return done.tokens, done.codes

    cases_run = ["image", "silent_video"]
    alone = {case: answer_alone(case) for case in cases_run}
    together: dict[str, tuple] = {}
    barrier = threading.Barrier(len(cases_run))

    def run(case: str) -> None:
        barrier.wait()
        together[case] = answer_alone(case)

    threads = [threading.Thread(target=run, args=(case,)) for case in cases_run]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert together == alone
