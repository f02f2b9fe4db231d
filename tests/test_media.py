"""model.inputs.media: the committed assets decode to what the model takes, resampling is right, and every bad
file ends in a MediaError a user can read."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from model.inputs.media import (
    MediaError,
    VideoClip,
    load_audio,
    load_image,
    load_video,
    media_kind,
    prepare_audio,
    sample_frame_count,
    sample_frame_indices,
)

SR = 16_000
QUESTION_SECONDS = 2.94  # espeak-ng's question, trimmed (assets/make_assets.py)
CLIP_SECONDS, CLIP_SOURCE_FPS, CLIP_SIZE = 4.0, 10, (224, 168)  # what make_assets.py draws


def tone(freq: float, rate: int, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


def amplitude(audio: np.ndarray) -> float:
    """A sine's amplitude from its RMS, away from the edges."""
    middle = audio[len(audio) // 10 : -len(audio) // 10]
    return float(np.sqrt(np.mean(middle.astype(np.float64) ** 2)) * np.sqrt(2))


def encode_audio(path, codec: str, audio: np.ndarray, rate: int, fmt: str | None = None) -> None:
    """Mono float audio into any container/codec with PyAV (the way browsers and phones hand us files)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame_format = stream.codec_context.codec.audio_formats[0].name
        frame = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        frame = av.AudioResampler(format=frame_format, layout="mono", rate=rate).resample(frame)
        for f in frame:
            out.mux(stream.encode(f))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def question(assets) -> np.ndarray:
    return load_audio(assets / "question.wav")


# ---------------------------------------------------------------- the assets


def test_question_wav_is_16k_mono_speech(assets, question):
    info = soundfile.info(assets / "question.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
    assert question.dtype == np.float32 and question.ndim == 1
    assert len(question) / SR == pytest.approx(QUESTION_SECONDS, abs=0.3)
    assert 0.2 < np.abs(question).max() <= 1.0  # speech, not silence, not clipped


def test_question_48k_is_the_same_speech(assets, question):
    info = soundfile.info(assets / "question_48k.wav")
    assert (info.samplerate, info.channels, info.subtype) == (48_000, 1, "PCM_16")
    from_48k = load_audio(assets / "question_48k.wav")
    assert abs(len(from_48k) - len(question)) <= 1
    n = min(len(from_48k), len(question))
    assert np.abs(from_48k[:n] - question[:n]).max() < 0.01  # the 48 kHz -> 16 kHz path agrees


def test_scene_png(assets):
    image = load_image(assets / "scene.png")
    assert image.mode == "RGB" and image.size == (336, 224)


def test_clip_with_audio_samples_2fps_and_keeps_its_audio(assets, question):
    clip = load_video(assets / "clip_with_audio.mp4")
    total = round(CLIP_SECONDS * CLIP_SOURCE_FPS)
    n = sample_frame_count(total, CLIP_SOURCE_FPS)
    assert n == 8  # 4 s at 2 fps
    assert isinstance(clip, VideoClip)
    assert clip.frames.shape == (n, CLIP_SIZE[1], CLIP_SIZE[0], 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(2.0)
    expected_times = sample_frame_indices(total, n) / CLIP_SOURCE_FPS
    np.testing.assert_allclose(clip.timestamps, expected_times, atol=1e-6)
    assert np.all(np.diff(clip.timestamps) > 0)

    assert clip.audio is not None and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert len(clip.audio) / SR == pytest.approx(CLIP_SECONDS, abs=0.05)
    # The track is the question (48 kHz stereo AAC): back at 16 kHz mono it lines up with question.wav.
    m = len(question)
    assert np.corrcoef(clip.audio[:m], question)[0, 1] > 0.95


def test_clip_frames_are_the_sampled_ones(assets):
    """The red ball crosses the frame left to right; its position in each sampled frame tells which
    source frame was kept."""
    clip = load_video(assets / "clip_with_audio.mp4", with_audio=False)
    total = round(CLIP_SECONDS * CLIP_SOURCE_FPS)
    rgb = clip.frames.astype(int)
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    centre_x = np.array([np.nonzero(mask)[1].mean() for mask in red])
    expected = (0.05 + 0.90 * sample_frame_indices(total, len(clip.frames)) / (total - 1)) * CLIP_SIZE[0]
    np.testing.assert_allclose(centre_x, expected, atol=3)
    assert clip.audio is None  # not asked for


def test_clip_silent_has_no_audio(assets):
    clip = load_video(assets / "clip_silent.mp4")
    assert clip.audio is None
    assert clip.frames.shape == (8, CLIP_SIZE[1], CLIP_SIZE[0], 3)
    assert clip.fps == pytest.approx(2.0)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("question.wav", "audio"),
        ("question_48k.wav", "audio"),
        ("scene.png", "image"),
        ("clip_with_audio.mp4", "video"),
        ("clip_silent.mp4", "video"),
    ],
)
def test_media_kind_of_assets(assets, name, kind):
    assert media_kind(assets / name) == kind


def test_media_kind_reads_content_not_the_name(assets, tmp_path):
    for source, misnamed, kind in [
        ("scene.png", "scene.wav", "image"),
        ("clip_silent.mp4", "clip.png", "video"),
        ("question.wav", "question.mp4", "audio"),
    ]:
        (tmp_path / misnamed).write_bytes((assets / source).read_bytes())
        assert media_kind(tmp_path / misnamed) == kind
    assert len(load_audio(tmp_path / "question.mp4")) > SR  # read by content too


# ---------------------------------------------------------------- the 2 fps rule


@pytest.mark.parametrize(
    "total, video_fps, expected",
    [
        (40, 10, 8),  # 4 s -> 8
        (49, 10, 8),  # 4.9 s -> 9.8, floored to a multiple of 2
        (30, 30, 4),  # 1 s -> 2, raised to the minimum of 4
        (3, 30, 2),  # fewer frames than the minimum: as many as there are, in pairs
        (10_000, 10, 768),  # 1000 s -> 2000, capped
        (900, 30, 60),  # 30 s
        (151, 29.97, 10),  # 5.04 s -> 10.08
    ],
)
def test_sample_frame_count(total, video_fps, expected):
    assert sample_frame_count(total, video_fps) == expected


def test_sample_frame_indices_match_qwen_omni_utils():
    """qwen-omni-utils takes torch.linspace(0, total - 1, nframes).round(); ours must pick the same."""
    for total in (4, 7, 40, 49, 151, 900, 2999):
        for nframes in range(2, min(total, 768) + 1, 2):
            ours = sample_frame_indices(total, nframes)
            theirs = torch.linspace(0, total - 1, nframes).round().long().numpy()
            np.testing.assert_array_equal(ours, theirs)


# ---------------------------------------------------------------- resampling and decoding paths


def test_44k1_stereo_wav_becomes_16k_mono_mean(tmp_path):
    left, right = tone(1000, 44_100, 2.0, 0.6), tone(1000, 44_100, 2.0, 0.2)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44_100, subtype="PCM_16")
    audio = load_audio(tmp_path / "stereo.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 32_000) <= 1
    assert peak_hz(audio, SR) == pytest.approx(1000, abs=2)
    assert amplitude(audio) == pytest.approx(0.4, abs=0.005)  # the channels' mean


def test_resampler_keeps_time_and_removes_what_would_alias():
    aligned = prepare_audio(tone(1000, 44_100, 1.0, 0.5), 44_100)
    ideal = tone(1000, SR, 1.0, 0.5)
    assert np.abs(aligned[50:-50] - ideal[50:-50]).max() < 1e-3  # no delay, no gain error
    assert amplitude(prepare_audio(tone(12_000, 44_100, 1.0, 0.5), 44_100)) < 0.005  # above 8 kHz: gone


def test_48k_int16_to_16k():
    mic = np.round(tone(440, 48_000, 1.5, 0.25) * 32768).astype(np.int16)  # a browser microphone's array
    audio = prepare_audio(mic, 48_000)
    assert audio.dtype == np.float32 and len(audio) == 24_000
    assert peak_hz(audio, SR) == pytest.approx(440, abs=2)
    assert amplitude(audio) == pytest.approx(0.25, abs=0.003)
    two_channels = prepare_audio(np.stack([mic, mic], axis=1), 48_000)
    np.testing.assert_allclose(two_channels, audio, atol=1e-6)


@pytest.mark.parametrize(
    "name, codec, rate, fmt",
    [("q.mp3", "mp3", 44_100, None), ("q.m4a", "aac", 48_000, "ipod"), ("q.webm", "libopus", 48_000, "webm")],
)
def test_compressed_audio_through_pyav(tmp_path, question, name, codec, rate, fmt):
    encode_audio(tmp_path / name, codec, prepare_audio(question, SR, target_rate=rate), rate, fmt)
    audio = load_audio(tmp_path / name)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Encoders pad to whole frames (mp3 also adds a little lead-in); the speech itself stays the same.
    assert len(audio) / SR == pytest.approx(len(question) / SR, abs=0.1)
    assert media_kind(tmp_path / name) == "audio"


def test_image_exif_orientation_and_transparency(tmp_path):
    # Stored 40 wide, 20 high, with EXIF "rotate 90 degrees clockwise to view" (orientation 6).
    stored = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.mode == "RGB" and upright.size == (20, 40)

    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((4, 4)) == (255, 255, 255)


# ---------------------------------------------------------------- failures a user can read


def test_missing_and_empty_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    for load in (load_audio, load_image, load_video, media_kind):
        with pytest.raises(MediaError, match="not found"):
            load(tmp_path / "nowhere.wav")
        with pytest.raises(MediaError, match="empty"):
            load(tmp_path / "empty.wav")


@pytest.mark.parametrize("name", ["corrupt.mp4", "corrupt.wav"])
def test_corrupt_assets(assets, name):
    for load in (load_audio, load_image, load_video, media_kind):
        with pytest.raises(MediaError, match=name):
            load(assets / name)


def test_truncated_video(assets, tmp_path):
    data = (assets / "clip_with_audio.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])  # the index ('moov') is at the end
    with pytest.raises(MediaError, match="not a readable video file"):
        load_video(tmp_path / "cut.mp4")


def test_unsupported_file(tmp_path):
    (tmp_path / "notes.txt").write_text("What do you see in this picture?\n" * 20)
    with pytest.raises(MediaError, match="not an image, audio or video file"):
        media_kind(tmp_path / "notes.txt")
    for load in (load_audio, load_image, load_video):
        with pytest.raises(MediaError, match="not a readable"):
            load(tmp_path / "notes.txt")


def test_audio_without_samples(tmp_path):
    soundfile.write(tmp_path / "silent.wav", np.zeros(0, np.int16), SR, subtype="PCM_16")
    with pytest.raises(MediaError, match="no samples"):
        load_audio(tmp_path / "silent.wav")
    with pytest.raises(MediaError, match="no samples"):
        prepare_audio(np.zeros(0, np.float32), SR)


def test_video_without_frames(assets, tmp_path, question):
    encode_audio(tmp_path / "voice.m4a", "aac", question, SR, "ipod")
    with pytest.raises(MediaError, match="Video has no frames"):
        load_video(tmp_path / "voice.m4a")
    with pytest.raises(MediaError, match="no audio track"):  # and the other way round
        load_audio(assets / "clip_silent.mp4")

    # A video track that holds no frame at all, next to a real audio track.
    with av.open(str(tmp_path / "empty_video.mkv"), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, SR), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SR, 0, Fraction(1, SR)
        out.mux(sound.encode(frame))
        out.mux(sound.encode())
        out.mux(video.encode())
    with pytest.raises(MediaError, match="Video has no frames"):
        load_video(tmp_path / "empty_video.mkv")

