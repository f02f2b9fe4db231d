"""Bad and unusual files, as users upload them: each decodes correctly or ends in one MediaError sentence
that names the file, and the limits (model.inputs.limits) hold before decoding and while decoding.

Every file is made here, in tmp_path, from the committed assets or with PyAV, soundfile and PIL.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from model.inputs import limits as L
from model.inputs import media
from model.inputs.conversation import Audio, Video
from model.inputs.conversation import Image as ImagePart
from model.inputs.media import MediaError, load_audio, load_image, load_video, media_kind
from model.inputs.message import parts_from_files

SR = 16_000
LOADERS = (load_audio, load_image, load_video, media_kind)


def tone(freq: float, rate: int, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def peak_hz(audio: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


def amplitude(audio: np.ndarray) -> float:
    middle = audio[len(audio) // 10 : -len(audio) // 10]
    return float(np.sqrt(np.mean(middle.astype(np.float64) ** 2)) * np.sqrt(2))


def write_video(path, seconds: int, fps: int = 1, size=(32, 32), fmt: str | None = None) -> None:
    """Grey frames with mpeg4 (fast to encode at any size)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 128, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def claim_matroska_duration(path, seconds: float) -> None:
    """Rewrite a Matroska file's Duration element (ID 0x4489, an 8-byte float in milliseconds): a header
    that lies about the length while every packet stays in the file."""
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89\x88")
    data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)
    path.write_bytes(bytes(data))


def refuse_decoding(monkeypatch) -> None:
    """Decoding audio or video frames from here on fails the test: a limit must have been hit first."""

    def decoded(*args, **kwargs):
        raise AssertionError("decoded before the limit was checked")

    monkeypatch.setattr(media, "_resample_mono", decoded)
    monkeypatch.setattr(media, "_decode_sampled", decoded)


# ---------------------------------------------------------------- odd but valid audio


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 96_000])
@pytest.mark.parametrize("suffix", [".wav", ".bin"])  # .wav: libsndfile; any other name: FFmpeg
def test_odd_sample_rates_become_16k_mono(tmp_path, rate, suffix):
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, tone(440, rate, 1.0, 0.5), rate, subtype="PCM_16", format="WAV")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - SR) <= 2
    assert peak_hz(audio) == pytest.approx(440, abs=2)
    assert amplitude(audio) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("suffix", [".wav", ".bin"])
def test_six_channels_are_averaged(tmp_path, suffix):
    same = np.stack([tone(440, 48_000, 1.0, 0.5)] * 6, axis=1)
    soundfile.write(tmp_path / f"same{suffix}", same, 48_000, subtype="PCM_16", format="WAV")
    assert amplitude(load_audio(tmp_path / f"same{suffix}")) == pytest.approx(0.5, abs=0.01)
    one = np.zeros_like(same)
    one[:, 2] = same[:, 2]  # the centre channel alone
    soundfile.write(tmp_path / f"one{suffix}", one, 48_000, subtype="PCM_16", format="WAV")
    assert amplitude(load_audio(tmp_path / f"one{suffix}")) == pytest.approx(0.5 / 6, abs=0.005)


@pytest.mark.parametrize("suffix", [".wav", ".bin"])
def test_8bit_unsigned_wav_is_centred(tmp_path, suffix):
    soundfile.write(tmp_path / f"u8{suffix}", tone(440, 8_000, 1.0, 0.5), 8_000, subtype="PCM_U8", format="WAV")
    audio = load_audio(tmp_path / f"u8{suffix}")
    assert abs(float(audio.mean())) < 0.01  # 128 is zero: no DC offset of +1
    assert peak_hz(audio) == pytest.approx(440, abs=2)
    assert amplitude(audio) == pytest.approx(0.5, abs=0.02)


def test_silence_is_valid_input(tmp_path, loaded):
    """Silence decodes and goes to the model like any audio (people ask 'what do you hear?')."""
    soundfile.write(tmp_path / "quiet.wav", np.zeros(2 * SR, np.int16), SR, subtype="PCM_16")
    (part,) = parts_from_files([str(tmp_path / "quiet.wav")])
    assert isinstance(part, Audio) and len(part.samples) == 2 * SR and not part.samples.any()
    inputs = loaded.processor(text="<|audio_bos|><|AUDIO|><|audio_eos|>", audio=[part.samples])
    assert (inputs["input_ids"] == loaded.processor.audio_token_id).sum() == 50  # 25 tokens per second
    assert np.isfinite(inputs["input_features"].numpy()).all()


def test_audio_too_short_to_hear(tmp_path):
    """Under 25 ms there is not one audio token: refused with a message, not a processor crash."""
    soundfile.write(tmp_path / "click.wav", np.ones(160, np.int16), SR, subtype="PCM_16")
    message = r"^Audio is too short to hear: 0.01 s, at least 0.1 s is needed \(click.wav\)\.$"
    with pytest.raises(MediaError, match=message):
        load_audio(tmp_path / "click.wav")
    with pytest.raises(MediaError, match=r"^Audio is too short to hear: 0.01 s, at least 0.1 s is needed\.$"):
        media.check_audio_clip(np.ones(100, np.float32))  # a recording that never was a file
    assert len(media.prepare_audio(np.ones(480, np.int16), 48_000)) == 160  # a stream's chunk: any length
    assert len(media.check_audio_clip(np.zeros(SR // 10, np.float32))) == SR // 10


# ---------------------------------------------------------------- mislabelled, truncated, corrupt, unsupported


def test_mislabelled_files_are_read_by_content(assets, tmp_path):
    for source, misnamed, part_type in [
        ("question.wav", "question.mp4", Audio),
        ("question.wav", "question.png", Audio),
        ("clip_with_audio.mp4", "clip.png", Video),
        ("clip_with_audio.mp4", "clip.wav", Video),
        ("scene.png", "scene.mp4", ImagePart),
        ("scene.png", "scene.wav", ImagePart),
    ]:
        (tmp_path / misnamed).write_bytes((assets / source).read_bytes())
        (part,) = parts_from_files([str(tmp_path / misnamed)])
        assert isinstance(part, part_type), misnamed
    assert part.image.size == (336, 224)


def test_truncated_wav_keeps_what_is_there(assets, tmp_path):
    """A cut-off recording is still a recording: its first half is heard (libsndfile and FFmpeg agree)."""
    data = (assets / "question.wav").read_bytes()
    whole = load_audio(assets / "question.wav")
    for name in ("half.wav", "half.mp4"):
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        half = load_audio(tmp_path / name)
        assert abs(len(half) - len(whole) // 2) < 100
        np.testing.assert_allclose(half[:1000], whole[:1000], atol=1e-4)


@pytest.mark.parametrize("source", ["scene.png", "scene.jpg", "clip_with_audio.mp4", "clip_faststart.mp4"])
def test_truncated_images_and_videos_are_refused(assets, tmp_path, source):
    path = tmp_path / source
    if source == "scene.jpg":
        Image.open(assets / "scene.png").convert("RGB").save(path)
    elif source == "clip_faststart.mp4":  # the index ('moov') first: the cut leaves a readable header
        faststart = {"movflags": "faststart"}
        with av.open(str(assets / "clip_with_audio.mp4")) as src, av.open(str(path), "w", options=faststart) as out:
            streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
            for packet in src.demux():
                if packet.dts is not None:
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
    else:
        path.write_bytes((assets / source).read_bytes())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    damaged = "a readable (image|video file): it is damaged or cut short"
    unreadable = rf"^This file is not ({damaged}|an image, audio or video file) \({source}\)\.$"
    with pytest.raises(MediaError, match=unreadable):
        parts_from_files([str(path)])


def test_unsupported_formats(assets, tmp_path):
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + bytes(range(256)) * 20)
    with zipfile.ZipFile(tmp_path / "media.zip", "w") as archive:
        archive.write(assets / "question.wav", "question.wav")  # media inside is not media
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    (tmp_path / "notes.wav").write_text("Describe this sound.\n" * 50)
    (tmp_path / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>')
    for name in ("doc.pdf", "media.zip", "noise.png", "notes.wav", "logo.svg"):
        with pytest.raises(MediaError, match=rf"^This file is not an image, audio or video file \({name}\)\.$"):
            parts_from_files([str(tmp_path / name)])
        for load in (load_audio, load_image, load_video):
            with pytest.raises(MediaError, match=rf"not a readable .*{name}"):
                load(tmp_path / name)


# ---------------------------------------------------------------- limits, before decoding


def test_file_over_the_size_limit_is_refused_unread(tmp_path, monkeypatch):
    big = tmp_path / "huge.wav"
    with open(big, "wb") as f:
        f.truncate(L.MAX_UPLOAD_BYTES + 1)  # sparse: no disk used, and all zeros (not a readable file)
    monkeypatch.setattr(media.Image, "open", lambda *a, **k: pytest.fail("opened"))
    monkeypatch.setattr(media.av, "open", lambda *a, **k: pytest.fail("opened"))
    for load in LOADERS:
        with pytest.raises(MediaError, match=r"^File is too large: 200.0 MB, the limit is 200 MB \(huge.wav\)\.$"):
            load(big)


def png_claiming(path, width: int, height: int) -> None:
    """A one-pixel PNG whose header (IHDR) claims width x height."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))


def test_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    png_claiming(tmp_path / "bomb.png", 9_000, 9_000)
    png_claiming(tmp_path / "huge.png", 15_000, 15_000)  # past PIL's own limit: Image.open refuses it
    monkeypatch.setattr(media.Image.Image, "load", lambda self: pytest.fail("decoded"))
    message = r"^This image is 9000x9000, 81 megapixels; the limit is 64 megapixels \(bomb.png\)\.$"
    with pytest.raises(MediaError, match=message):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(MediaError, match=r"^This image has too many pixels to open \(huge.png\)\.$"):
        load_image(tmp_path / "huge.png")
    for name in ("bomb.png", "huge.png"):
        assert media_kind(tmp_path / name) == "image"  # what it is; load_image says what is wrong


def test_image_too_elongated_for_the_model(tmp_path):
    Image.new("RGB", (400, 2)).save(tmp_path / "strip200.png")
    assert load_image(tmp_path / "strip200.png").size == (400, 2)  # 200:1 is the processor's own limit
    Image.new("RGB", (402, 2)).save(tmp_path / "strip201.png")
    with pytest.raises(MediaError, match=r"402x2, too narrow for the model: at most 200:1 \(strip201.png\)"):
        load_image(tmp_path / "strip201.png")


def test_audio_over_the_duration_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    seconds = int(L.MAX_AUDIO_SECONDS) + 1
    soundfile.write(tmp_path / "long.wav", np.zeros(8_000 * seconds, np.int16), 8_000, subtype="PCM_U8")
    with av.open(str(tmp_path / "long.mka"), "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=8_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8_000 * seconds), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 8_000, 0, Fraction(1, 8_000)
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    refuse_decoding(monkeypatch)
    for name in ("long.wav", "long.mka"):
        with pytest.raises(MediaError, match=rf"^Audio is 301 s long; the limit is 300 s \({name}\)\.$"):
            load_audio(tmp_path / name)


def test_audio_whose_header_lies_is_cut_off_while_decoding(tmp_path):
    seconds = int(L.MAX_AUDIO_SECONDS) + 100
    path = tmp_path / "lying.mka"
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=8_000, layout="mono")
        for second in range(seconds):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 8_000), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 8_000, second * 8_000, Fraction(1, 8_000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    claim_matroska_duration(path, 1.0)
    with av.open(str(path)) as container:
        assert container.duration / av.time_base == pytest.approx(1.0)  # the lie is in place
    with pytest.raises(MediaError, match=r"^Audio is longer than the limit of 300 s \(lying.mka\)\.$"):
        load_audio(path)


def test_video_over_the_duration_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    write_video(tmp_path / "long.mp4", int(L.MAX_VIDEO_SECONDS) + 1)
    monkeypatch.setattr(media, "_count_frames", lambda *a: pytest.fail("demuxed"))
    refuse_decoding(monkeypatch)
    with pytest.raises(MediaError, match=r"^Video is 61 s long; the limit is 60 s \(long.mp4\)\.$"):
        load_video(tmp_path / "long.mp4")


def test_video_whose_header_lies_is_refused_from_its_frame_count(tmp_path, monkeypatch):
    write_video(tmp_path / "lying.mkv", int(L.MAX_VIDEO_SECONDS) + 10, fmt="matroska")
    claim_matroska_duration(tmp_path / "lying.mkv", 1.0)
    refuse_decoding(monkeypatch)
    with pytest.raises(MediaError, match=r"^Video is 70 s long; the limit is 60 s \(lying.mkv\)\.$"):
        load_video(tmp_path / "lying.mkv")


def test_video_with_too_many_frames_is_refused_before_decoding(tmp_path, monkeypatch):
    """A short video at an absurd frame rate would cost a decode of every frame: counted, then refused."""
    monkeypatch.setattr(L, "MAX_VIDEO_SOURCE_FPS", 2.0)  # 120 frames at most; the real bound is 14,400
    write_video(tmp_path / "fast.mp4", 10, fps=20, size=(16, 16))
    refuse_decoding(monkeypatch)
    message = r"^Video has more than 120 frames; the limit is 60 s at up to 2 frames per second \(fast.mp4\)\.$"
    with pytest.raises(MediaError, match=message):
        load_video(tmp_path / "fast.mp4")


def test_video_with_a_sound_track_too_short_to_hear_is_a_silent_video(tmp_path):
    with av.open(str(tmp_path / "blip.mkv"), "w", format="matroska") as out:
        video = out.add_stream("mpeg4", rate=4)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=SR, layout="mono")
        blip = av.AudioFrame.from_ndarray(np.ones((1, SR // 50), np.int16), format="s16", layout="mono")  # 20 ms
        blip.sample_rate, blip.pts, blip.time_base = SR, 0, Fraction(1, SR)
        out.mux(sound.encode(blip))
        out.mux(sound.encode())
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
    clip = load_video(tmp_path / "blip.mkv")
    assert clip.audio is None and len(clip.frames) == 4


def test_video_with_a_sound_track_longer_than_the_limit(tmp_path):
    """The pictures are short, the sound goes on: the sound is cut off while decoding."""
    with av.open(str(tmp_path / "talk.mkv"), "w", format="matroska") as out:
        video = out.add_stream("mpeg4", rate=1)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=8_000, layout="mono")
        for second in range(int(L.MAX_VIDEO_SECONDS) + 10):
            pcm = av.AudioFrame.from_ndarray(np.zeros((1, 8_000), np.int16), format="s16", layout="mono")
            pcm.sample_rate, pcm.pts, pcm.time_base = 8_000, second * 8_000, Fraction(1, 8_000)
            out.mux(sound.encode(pcm))
            if second < 4:
                frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
                frame.pts = second
                out.mux(video.encode(frame))
        out.mux(sound.encode())
        out.mux(video.encode())
    claim_matroska_duration(tmp_path / "talk.mkv", 4.0)
    with pytest.raises(MediaError, match=r"^The video's sound is longer than the limit of 60 s \(talk.mkv\)\.$"):
        load_video(tmp_path / "talk.mkv")


def test_video_at_the_duration_limit_is_sampled_at_2fps(tmp_path):
    write_video(tmp_path / "minute.mp4", int(L.MAX_VIDEO_SECONDS), size=(16, 16))
    clip = load_video(tmp_path / "minute.mp4")
    assert len(clip.frames) == int(L.MAX_VIDEO_SECONDS)  # a 1 fps source gives every frame


def test_video_frames_over_the_pixel_limit_are_refused_from_the_header(tmp_path, monkeypatch):
    write_video(tmp_path / "8k.mp4", 1, size=(4096, 2304))
    refuse_decoding(monkeypatch)
    message = r"^This video is 4096x2304, 9 megapixels; the limit is 8 megapixels \(8k.mp4\)\.$"
    with pytest.raises(MediaError, match=message):
        load_video(tmp_path / "8k.mp4")


def test_a_message_with_too_many_files_or_too_much_is_refused_before_any_is_opened(tmp_path, monkeypatch, assets):
    """Every file of a message is decoded and held before the model sees any: the count and the total size
    are checked before any file is opened, the number of videos from the headers before any is decoded."""
    from model.inputs import message

    monkeypatch.setattr(media.Image, "open", lambda *a, **k: pytest.fail("opened"))
    monkeypatch.setattr(media.av, "open", lambda *a, **k: pytest.fail("opened"))
    many = [str(assets / "scene.png")] * (L.MAX_FILES_PER_MESSAGE + 1)
    with pytest.raises(L.UserInputError, match=rf"^One message can carry at most {L.MAX_FILES_PER_MESSAGE} files; "
                                               rf"this one has {len(many)}\."):
        message.parts_from_message("what are these?", many)
    big = []
    for i in range(4):
        path = tmp_path / f"big-{i}.mp4"
        with open(path, "wb") as f:
            f.truncate(120 * L.MIB)  # sparse; each under the upload limit, together over the message's
        big.append(str(path))
    with pytest.raises(L.UserInputError, match=r"^These files add up to 480.0 MB; one message can carry at most 400 MB"):
        message.parts_from_message("", big)
    monkeypatch.undo()
    decoded = []
    monkeypatch.setattr(message, "load_video", lambda path: decoded.append(path))
    videos = [str(assets / "clip_silent.mp4")] * (L.MAX_VIDEOS_PER_MESSAGE + 1)
    with pytest.raises(L.UserInputError, match=rf"^One message can carry at most {L.MAX_VIDEOS_PER_MESSAGE} videos"):
        message.parts_from_message("", videos)
    assert decoded == []
