"""Decode a user's files (uploads, recordings) into what the model takes, or say plainly why not.

Audio becomes 16 kHz mono float32, images RGB, videos frames sampled the way Qwen2.5-Omni was trained
(2 fps, `qwen-omni-utils` `fetch_video`) plus their audio track. Every failure is a `MediaError` whose
message can be shown to the user as it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image, ImageOps, UnidentifiedImageError

from model.constants import INPUT_SAMPLE_RATE, VIDEO_FPS

# libsndfile reads these directly; PyAV (FFmpeg) decodes everything else, including video audio tracks.
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga"}
_SOUNDFILE_BLOCK = 65_536  # samples per read: bounded memory for long recordings

# FFmpeg's demuxers for ANSI/BIN text art "play" any plain text file as video; text is not media here.
_TEXT_DEMUXERS = {"tty", "bin", "xbin", "adf", "idf"}

# qwen-omni-utils' frame-count rule (vision_process.py): frames go to the vision encoder in pairs
# (temporal patch 2), at least 4 and at most 768 of them.
FRAME_FACTOR = 2
MIN_FRAMES = 4
MAX_FRAMES = 768


class MediaError(ValueError):
    """A file the app cannot use; the message is one sentence meant for the user."""


@dataclass
class VideoClip:
    frames: np.ndarray  # uint8 (T, H, W, 3), RGB
    timestamps: np.ndarray  # float64 (T,), seconds of each frame from the first frame
    fps: float  # frames per second actually sampled (T / duration); the processor needs it for time ids
    audio: np.ndarray | None  # 16 kHz mono float32; None when the file has no (non-empty) audio track


# ---------------------------------------------------------------- audio


def prepare_audio(samples: np.ndarray, sample_rate: int, target_rate: int = INPUT_SAMPLE_RATE) -> np.ndarray:
    """Any PCM array, (n,) or (n, channels), int or float, at any rate -> mono float32 at `target_rate`
    (the model's 16 kHz unless told otherwise).

    This is also the path for arrays that never were files (a browser microphone's int16 at 48 kHz).
    """
    if samples.size == 0:
        raise MediaError("Audio has no samples.")
    return _resample_mono([_mono(_to_float(samples))], sample_rate, target_rate)


def load_audio(path: str | Path) -> np.ndarray:
    """An audio file, or the audio track of a video file, as 16 kHz mono float32."""
    path = _existing_file(path)
    audio = None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            audio = _load_with_soundfile(path)
        except soundfile.SoundFileError:
            pass  # a misnamed file or a codec libsndfile lacks: let FFmpeg try before giving up
    if audio is None:
        audio = _load_with_pyav(path)
    if audio.size == 0:
        raise MediaError(f"Audio has no samples ({path.name}).")
    return audio


def _load_with_soundfile(path: Path) -> np.ndarray:
    with soundfile.SoundFile(path) as f:
        blocks = (_mono(b) for b in f.blocks(_SOUNDFILE_BLOCK, dtype="float32", always_2d=True))
        return _resample_mono(blocks, f.samplerate)


def _load_with_pyav(path: Path) -> np.ndarray:
    with _open_media(path, "audio file") as container:
        stream = _first_stream(container.streams.audio, "audio", path)
        if stream is None:
            raise MediaError(f"This file has no audio track ({path.name}).")
        return _decode_audio(container, stream)


def _decode_audio(container, stream) -> np.ndarray:
    def mono_chunks() -> Iterator[np.ndarray]:
        for frame in container.decode(stream):
            pcm = frame.to_ndarray()
            if not frame.format.is_planar:  # packed samples arrive as one interleaved row
                pcm = pcm.reshape(-1, frame.layout.nb_channels).T
            yield _mono(_to_float(pcm).T)

    rate = stream.codec_context.sample_rate
    return _resample_mono(mono_chunks(), rate)


def _to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM to float32 in [-1, 1); float stays as it is."""
    if not np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32, copy=False)
    half_scale = 2.0 ** (np.iinfo(samples.dtype).bits - 1)
    centre = half_scale if np.issubdtype(samples.dtype, np.unsignedinteger) else 0.0  # 8-bit WAV is unsigned
    return ((samples.astype(np.float64) - centre) / half_scale).astype(np.float32)


def _mono(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,): the plain mean, so no channel is favoured and nothing clips."""
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def _resample_mono(
    chunks: Iterable[np.ndarray], rate: int, target_rate: int = INPUT_SAMPLE_RATE
) -> np.ndarray:
    """Mono float32 chunks at `rate` -> one array at `target_rate`.

    FFmpeg's swresample (through PyAV, already a dependency) is a windowed-sinc polyphase resampler:
    measured here it keeps the output time-aligned with the input, gives exactly n * target_rate / rate
    samples and attenuates what would alias (9 kHz from 44.1 kHz) by about 60 dB.
    """
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    out: list[np.ndarray] = []
    fed = False
    for chunk in chunks:
        if chunk.size == 0:
            continue
        pcm = np.ascontiguousarray(chunk, np.float32)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = rate
        out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        fed = True
    if fed:  # the filter holds back its last few samples until flushed
        out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# ---------------------------------------------------------------- images


def load_image(path: str | Path) -> Image.Image:
    """An image file as RGB, turned upright by its EXIF orientation (phone photos are stored sideways)."""
    path = _existing_file(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # also forces a full decode, so truncation shows here
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                # Transparent pixels keep arbitrary colours underneath; show them as white, as
                # qwen-omni-utils does, rather than whatever the RGB channels happen to hold.
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise MediaError(f"This image is too large to open ({path.name}).") from err
    except UnidentifiedImageError as err:  # its message repeats the full path; the name is enough
        raise MediaError(f"This file is not a readable image ({path.name}).") from err
    except (OSError, SyntaxError) as err:  # PIL reports damaged data as either ("image file is truncated")
        raise MediaError(f"This file is not a readable image ({path.name}: {err}).") from err


# ---------------------------------------------------------------- video


def sample_frame_count(total_frames: int, video_fps: float, fps: float = VIDEO_FPS) -> int:
    """How many frames qwen-omni-utils' `smart_nframes` takes from a video, in its words:

    as many as `fps` per second of video (total / video_fps * fps), held between 4 and
    min(768, total) - both bounds taken to a multiple of 2 - and never more than the video has,
    then floored to a multiple of 2. (It floors, not rounds: 4.0 s at 2 fps is 8 frames, 4.9 s is 8 too.)
    """
    min_frames = math.ceil(MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    max_frames = (min(MAX_FRAMES, total_frames) // FRAME_FACTOR) * FRAME_FACTOR
    wanted = total_frames / video_fps * fps
    nframes = min(max(wanted, min_frames), max_frames, total_frames)
    return int(nframes // FRAME_FACTOR) * FRAME_FACTOR


def sample_frame_indices(total_frames: int, nframes: int) -> np.ndarray:
    """Evenly spread indices, first and last frame included: qwen-omni-utils'
    `torch.linspace(0, total - 1, nframes).round()`. numpy's float64 linspace rounded half-to-even gives
    the same indices (checked against torch for every even nframes up to 768 and total up to 3000)."""
    return np.round(np.linspace(0, total_frames - 1, nframes)).astype(np.int64)


def load_video(path: str | Path, fps: float = VIDEO_FPS, with_audio: bool = True) -> VideoClip:
    """A video file's frames sampled at `fps` (as the model was trained) and, if asked, its audio track."""
    path = _existing_file(path)
    # Pass 1 only demuxes: the packet count is the frame count, so we know which frames to keep
    # before decoding and never hold the others.
    with _open_media(path, "video file") as container:
        stream = _video_stream(container, path)
        total = sum(1 for p in container.demux(stream) if p.size)
        video_fps = _frame_rate(stream, container, total, path)
        has_audio = _first_stream(container.streams.audio, "audio", path) is not None
    if total == 0:
        raise MediaError(f"Video has no frames ({path.name}).")

    frames, times, decoded = _decode_sampled(path, total, video_fps, fps)
    if decoded != total:  # a packet that decodes to no frame: sample again from the true count
        total = decoded
        frames, times, decoded = _decode_sampled(path, total, video_fps, fps)
    if decoded == 0:
        raise MediaError(f"Video has no frames ({path.name}).")

    audio = None
    if with_audio and has_audio:
        with _open_media(path, "video file") as container:
            audio = _decode_audio(container, _first_stream(container.streams.audio, "audio", path))
        audio = audio if audio.size else None

    # The sampled rate as qwen-omni-utils reports it: nframes over the video's duration (total / fps).
    sampled_fps = len(frames) / total * video_fps
    return VideoClip(frames=np.stack(frames), timestamps=np.asarray(times), fps=sampled_fps, audio=audio)


def _decode_sampled(path: Path, total: int, video_fps: float, fps: float) -> tuple[list, list, int]:
    nframes = sample_frame_count(total, video_fps, fps)
    if nframes < FRAME_FACTOR:
        raise MediaError(f"Video is too short: it needs at least {FRAME_FACTOR} frames ({path.name}).")
    keep = np.zeros(total, dtype=bool)
    keep[sample_frame_indices(total, nframes)] = True  # nframes <= total, so no index repeats
    frames, times = [], []
    size = origin = None
    decoded = 0
    with _open_media(path, "video file") as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            decoded += 1
            if origin is None:
                origin = frame.time
            if index >= total or not keep[index]:
                continue
            size = size or (frame.width, frame.height)  # a stream may change size; keep the first
            frames.append(frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray())
            known = frame.time is not None and origin is not None
            times.append(frame.time - origin if known else index / video_fps)
    return frames, times, decoded


def _video_stream(container, path: Path):
    stream = _first_stream(_moving_pictures(container), "video", path)
    if stream is None:
        raise MediaError(f"Video has no frames: this file has no video track ({path.name}).")
    return stream


def _moving_pictures(container) -> list:
    # An mp3's or m4a's cover art is a one-picture "video" stream: that file is audio, not video.
    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]


def _first_stream(streams, kind: str, path: Path):
    """The first of `streams` FFmpeg can decode; None if there are none at all."""
    if not streams:
        return None
    for stream in streams:
        if stream.codec_context is not None:  # None: FFmpeg knows the container but has no decoder
            return stream
    raise MediaError(f"This file's {kind} is in a format the app cannot decode ({path.name}).")


def _frame_rate(stream, container, total: int, path: Path) -> float:
    # The stream's average rate is what decord's get_avg_fps (qwen-omni-utils' reader) reports.
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    if container.duration and total:  # last resort: frames over the container's duration
        return total / (container.duration / av.time_base)
    raise MediaError(f"This video does not say how fast it plays ({path.name}).")


# ---------------------------------------------------------------- kinds and files


def media_kind(path: str | Path) -> str:
    """Whether a file is an "image", "audio" or "video", judged from its content, not its name."""
    path = _existing_file(path)
    try:
        with Image.open(path):
            return "image"
    except Image.DecompressionBombError:
        return "image"  # it is an image; load_image will say it is too large
    except (UnidentifiedImageError, OSError, SyntaxError):
        pass
    try:
        with av.open(str(path)) as container:
            if not _is_text(container):
                if _first_stream(_moving_pictures(container), "video", path) is not None:
                    return "video"
                if _first_stream(container.streams.audio, "audio", path) is not None:
                    return "audio"
    except av.error.FFmpegError:
        pass
    raise MediaError(f"This file is not an image, audio or video file ({path.name}).")


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"File not found ({path.name}).")
    if path.stat().st_size == 0:
        raise MediaError(f"File is empty ({path.name}).")
    return path


def _is_text(container) -> bool:
    return bool(_TEXT_DEMUXERS & set(container.format.name.split(",")))


@contextmanager
def _open_media(path: Path, what: str):
    """Open with PyAV; any FFmpeg error, while opening or decoding, becomes one MediaError."""
    try:
        with av.open(str(path)) as container:
            # FFmpeg "opens" some garbage after a valid header, finding nothing; and text as text art.
            if not container.streams or _is_text(container):
                reason = "no audio or video in it"
                raise MediaError(f"This file is not a readable {what} ({path.name}: {reason}).")
            yield container
    except av.error.FFmpegError as err:
        reason = err.strerror or type(err).__name__
        raise MediaError(f"This file is not a readable {what} ({path.name}: {reason}).") from err
