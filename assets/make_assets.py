"""Make the small media files the tests and demos use: `python assets/make_assets.py`.

Speech comes from espeak-ng (the only outside program); pictures are drawn with PIL; video and its audio
are encoded with PyAV, the project's own dependency, not the ffmpeg binary. The output is the same on
every run with the same espeak-ng, PyAV and FFmpeg builds (one encoder thread, no timestamps written).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image, ImageDraw

ASSETS = Path(__file__).resolve().parent
sys.path.insert(0, str(ASSETS.parent))  # run as a script from anywhere: make `model` importable

from model.inputs.media import prepare_audio  # noqa: E402

QUESTION_TEXT = "What do you see in this picture? Describe it briefly."  # about 3 s spoken
# The assistant's voice in the echo tests (tests/room.py): the tiny model's speech is noise to a voice
# detector, so a room that plays it back could never fool one; this plays in its place. About 8 s spoken.
ANSWER_TEXT = (
    "The picture shows a small red ball on a wooden table, next to a window. "
    "Outside, the sky is clear and blue, and a tree casts a long shadow across the grass."
)
ANSWER_VOICE = "en-us+f3"  # another voice than the user's
BROWSER_MIC_RATE = 48_000  # what getUserMedia delivers in Chrome and Firefox
SCENE_SIZE = (336, 224)  # 12 x 8 vision tokens of 28 x 28 pixels
CLIP_SIZE = (224, 168)  # 8 x 6 tokens per frame pair
CLIP_SOURCE_FPS = 10
CLIP_SECONDS = 4.0
CLIP_AUDIO_RATE = 48_000  # as phones and cameras record, so reading it exercises the resampler
CLIP_AUDIO_CHANNELS = 2  # ... and the downmix


def speak(text: str, voice: str = "en-us") -> tuple[np.ndarray, int]:
    """espeak-ng's voice for `text`: int16 samples and their rate (22.05 kHz for its default voice).

    Its trailing 0.3 s of silence is cut to 0.1 s (and the lead to 0.05 s): at 48 kHz int16 every
    second costs 96 KB of the repository, and the 48 kHz file must stay under 300 KB."""
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (Debian: apt-get install espeak-ng).")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
        samples, rate = soundfile.read(wav, dtype="int16")
    loud = np.flatnonzero(np.abs(samples) > 328)  # above 1% of full scale
    start, end = max(0, loud[0] - round(0.05 * rate)), loud[-1] + round(0.10 * rate)
    return samples[start:end], rate


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def draw_scene(size: tuple[int, int], ball_at: float | None = None) -> Image.Image:
    """Sky, sun, ground, a house and a tree; with `ball_at` in [0, 1], a red ball that far across."""
    w, h = size
    image = Image.new("RGB", size, (135, 195, 235))
    draw = ImageDraw.Draw(image)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:  # fractions of the frame
        return [x0 * w, y0 * h, x1 * w, y1 * h]

    draw.ellipse(box(0.78, 0.07, 0.92, 0.28), fill=(255, 210, 40))  # sun
    draw.rectangle(box(0, 0.68, 1, 1), fill=(90, 170, 70))  # grass
    draw.rectangle(box(0.14, 0.42, 0.44, 0.72), fill=(225, 190, 140))  # house walls
    draw.polygon([(0.10 * w, 0.43 * h), (0.29 * w, 0.22 * h), (0.48 * w, 0.43 * h)], fill=(170, 50, 40))
    draw.rectangle(box(0.26, 0.55, 0.33, 0.72), fill=(110, 70, 40))  # door
    draw.rectangle(box(0.18, 0.49, 0.24, 0.57), fill=(200, 230, 250), outline=(60, 60, 60))  # window
    draw.rectangle(box(0.70, 0.48, 0.74, 0.72), fill=(120, 80, 40))  # trunk
    draw.ellipse(box(0.61, 0.26, 0.83, 0.54), fill=(40, 120, 50))  # crown
    if ball_at is not None:
        x = 0.05 + 0.90 * ball_at
        y = 0.80 - 0.12 * abs(np.sin(np.pi * 3 * ball_at))  # three hops across the grass
        draw.ellipse(box(x - 0.04, y - 0.055, x + 0.04, y + 0.055), fill=(220, 30, 30))
    return image


def write_clip(path: Path, audio: np.ndarray | None) -> None:
    """CLIP_SECONDS of the ball crossing the scene, H.264 in MP4, with `audio` (float32 (n, channels)
    at CLIP_AUDIO_RATE) as an AAC track when given."""
    nframes = round(CLIP_SECONDS * CLIP_SOURCE_FPS)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=CLIP_SOURCE_FPS)
        video.width, video.height = CLIP_SIZE
        video.pix_fmt = "yuv420p"  # the one every player decodes
        # One encoder thread: the same bytes on every run and machine.
        video.codec_context.options = {"crf": "30", "preset": "medium", "threads": "1"}
        sound = None
        if audio is not None:
            sound = out.add_stream("aac", rate=CLIP_AUDIO_RATE, layout="stereo")
            sound.codec_context.bit_rate = 64_000
        for i in range(nframes):
            frame = av.VideoFrame.from_image(draw_scene(CLIP_SIZE, ball_at=i / (nframes - 1)))
            frame.pts, frame.time_base = i, Fraction(1, CLIP_SOURCE_FPS)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            planar = np.ascontiguousarray(audio.T, dtype=np.float32)  # fltp: one row per channel
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = CLIP_AUDIO_RATE, 0, Fraction(1, CLIP_AUDIO_RATE)
            out.mux(sound.encode(frame))  # PyAV cuts it into the encoder's 1024-sample frames
            out.mux(sound.encode())


def garbage(n: int, seed: bytes) -> bytes:
    """n fixed pseudo-random bytes (a hash chain, the same everywhere)."""
    blocks = (hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n // 32 + 1))
    return b"".join(blocks)[:n]


def main() -> None:
    speech, speech_rate = speak(QUESTION_TEXT)

    question = prepare_audio(speech, speech_rate)  # our own 16 kHz path, as the model will hear it
    soundfile.write(ASSETS / "question.wav", to_int16(question), 16_000, subtype="PCM_16")
    question_48k = prepare_audio(speech, speech_rate, target_rate=BROWSER_MIC_RATE)
    soundfile.write(ASSETS / "question_48k.wav", to_int16(question_48k), BROWSER_MIC_RATE, subtype="PCM_16")

    answer, answer_rate = speak(ANSWER_TEXT, ANSWER_VOICE)
    soundfile.write(ASSETS / "answer_voice.wav", to_int16(prepare_audio(answer, answer_rate)), 16_000, subtype="PCM_16")

    draw_scene(SCENE_SIZE).save(ASSETS / "scene.png", optimize=True)

    # The speech, padded with silence to the video's length, on both channels.
    track = np.zeros(round(CLIP_SECONDS * CLIP_AUDIO_RATE), np.float32)
    spoken = question_48k[: len(track)]
    track[: len(spoken)] = spoken
    write_clip(ASSETS / "clip_with_audio.mp4", np.repeat(track[:, None], CLIP_AUDIO_CHANNELS, axis=1))
    write_clip(ASSETS / "clip_silent.mp4", None)

    # An MP4 whose header is fine and whose 'moov' box is garbage; a WAV whose 'fmt ' chunk is garbage
    # and whose 'data' chunk claims far more bytes than the file has.
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isommp41"
    (ASSETS / "corrupt.mp4").write_bytes(ftyp + struct.pack(">I", 4096) + b"moov" + garbage(300, b"mp4"))
    riff = b"RIFF" + struct.pack("<I", 100_036) + b"WAVE"
    fmt = b"fmt " + struct.pack("<I", 16) + garbage(16, b"fmt")
    data = b"data" + struct.pack("<I", 100_000) + garbage(300, b"wav")
    (ASSETS / "corrupt.wav").write_bytes(riff + fmt + data)

    for path in sorted(ASSETS.iterdir()):
        if path.suffix != ".py":
            print(f"{path.name:24s} {path.stat().st_size:8d} bytes")


if __name__ == "__main__":
    main()
