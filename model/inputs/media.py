"""Decode a user's files (uploads, recordings) into what the model takes, or say plainly why not.

Audio becomes 16 kHz mono float32, images RGB, videos frames sampled the way Qwen2.5-Omni was trained
(2 fps, `qwen-omni-utils` `fetch_video`) plus their audio track. Every failure is a `MediaError` whose
message can be shown to the user as it is.

The limits of `model.inputs.limits` are enforced here, each as early as it can be: the file size before
opening, the image header's size and the container's declared duration before decoding, the frames counted before
any is decoded, and the samples decoded as they come (a header can lie about the length).
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
from model.inputs import limits as L

# libsndfile reads these directly; PyAV (FFmpeg) decodes everything else, including video audio tracks.
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga"}
_SOUNDFILE_BLOCK = 65_536  # samples per read: bounded memory for long recordings

# FFmpeg's demuxers for ANSI/BIN text art "play" any plain text file as video; text is not media here.
_TEXT_DEMUXERS = {"tty", "bin", "xbin", "adf", "idf"}
# Its image demuxers (image2, png_pipe, svg_pipe...) take a file PIL could not read, guessed from its name,
# as a one-frame "video": images are PIL's job, so such a file is not readable media.
_IMAGE_DEMUXERS = {"image2", "image2pipe"}

# qwen-omni-utils' frame-count rule (vision_process.py): frames go to the vision encoder in pairs
# (temporal patch 2), at least 4 and at most 768 of them.
FRAME_FACTOR = 2
MIN_FRAMES = 4
MAX_FRAMES = 768


class MediaError(L.UserInputError):
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

    This is also the path for arrays that never were files (a browser microphone's int16 at 48 kHz), and
    for chunks of a stream: any length is fine here. A whole recording that is to be one `Audio` part goes
    through `check_audio_clip` too.
    """
    if samples.size == 0:
        raise MediaError("Audio has no samples.")
    seconds = len(samples) / sample_rate
    if seconds > L.MAX_AUDIO_SECONDS:
        raise MediaError(_too_long("Audio", seconds, L.MAX_AUDIO_SECONDS))
    return _resample_mono([_mono(_to_float(samples))], sample_rate, target_rate)


def check_audio_clip(samples: np.ndarray, name: str | None = None) -> np.ndarray:
    """A whole clip (16 kHz mono) as it is, if the model can take it as one audio part; else a MediaError.

    Silence is valid input and passes; a clip too short to give one audio token, or longer than the
    processor's window, does not. `name` (a file's) goes into the message.
    """
    if len(samples) == 0:
        raise MediaError(f"Audio has no samples{_named(name)}.")
    seconds = len(samples) / INPUT_SAMPLE_RATE
    if seconds < L.MIN_AUDIO_SECONDS:
        needed = f"at least {L.MIN_AUDIO_SECONDS:g} s is needed"
        raise MediaError(f"Audio is too short to hear: {seconds:.2f} s, {needed}{_named(name)}.")
    if seconds > L.MAX_AUDIO_SECONDS + L.DECODE_SLACK_SECONDS:  # the slack: a file's decoder padding
        raise MediaError(_too_long("Audio", seconds, L.MAX_AUDIO_SECONDS, name))
    return samples


def load_audio(path: str | Path) -> np.ndarray:
    """An audio file, or the audio track of a video file, as 16 kHz mono float32.

    Silence is valid input and decodes as it is; only a file with (next to) no samples is refused.
    """
    path = _existing_file(path)
    audio = None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            audio = _load_with_soundfile(path)
        except soundfile.SoundFileError:
            pass  # a misnamed file or a codec libsndfile lacks: let FFmpeg try before giving up
    if audio is None:
        audio = _load_with_pyav(path)
    return check_audio_clip(audio, path.name)


def _too_long(what: str, seconds: float | None, limit: float, name: str | None = None) -> str:
    if seconds is None:  # found while decoding: the header said less
        return f"{what} is longer than the limit of {limit:.0f} s{_named(name)}."
    return f"{what} is {math.ceil(seconds)} s long; the limit is {limit:.0f} s{_named(name)}."


def _named(name: str | None) -> str:
    return f" ({name})" if name else ""


def _load_with_soundfile(path: Path) -> np.ndarray:
    with soundfile.SoundFile(path) as f:
        _refuse_declared_duration(f.frames / f.samplerate if f.frames > 0 else None, L.MAX_AUDIO_SECONDS, "Audio", path)
        blocks = (_mono(b) for b in f.blocks(_SOUNDFILE_BLOCK, dtype="float32", always_2d=True))
        return _resample_mono(_bounded(blocks, f.samplerate, L.MAX_AUDIO_SECONDS, "Audio", path), f.samplerate)


def _load_with_pyav(path: Path) -> np.ndarray:
    with _open_media(path, "audio file") as container:
        stream = _first_stream(container.streams.audio, "audio", path)
        if stream is None:
            raise MediaError(f"This file has no audio track ({path.name}).")
        _refuse_declared_duration(_declared_seconds(container, stream), L.MAX_AUDIO_SECONDS, "Audio", path)
        return _decode_audio(container, stream, L.MAX_AUDIO_SECONDS, path)


def _decode_audio(container, stream, max_seconds: float, path: Path, what: str = "Audio") -> np.ndarray:
    def mono_chunks() -> Iterator[np.ndarray]:
        for frame in container.decode(stream):
            pcm = frame.to_ndarray()
            if not frame.format.is_planar:  # packed samples arrive as one interleaved row
                pcm = pcm.reshape(-1, frame.layout.nb_channels).T
            yield _mono(_to_float(pcm).T)

    rate = stream.codec_context.sample_rate
    return _resample_mono(_bounded(mono_chunks(), rate, max_seconds, what, path), rate)


def _declared_seconds(container, stream) -> float | None:
    """The longest duration the file's headers state for `stream` (stream and container), if any."""
    stated = []
    if stream.duration and stream.time_base:
        stated.append(float(stream.duration * stream.time_base))
    if container.duration:
        stated.append(container.duration / av.time_base)
    return max(stated) if stated else None


def _refuse_declared_duration(seconds: float | None, limit: float, what: str, path: Path) -> None:
    """Before decoding: a file whose header says it is too long is refused without reading its samples."""
    if seconds is not None and seconds > limit:
        raise MediaError(_too_long(what, seconds, limit, path.name))


def _bounded(chunks: Iterable[np.ndarray], rate: int, limit: float, what: str, path: Path) -> Iterator[np.ndarray]:
    """While decoding: stop once more than `limit` seconds came out, whatever the header claimed."""
    most = int((limit + L.DECODE_SLACK_SECONDS) * rate)
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > most:
            raise MediaError(_too_long(what, None, limit, path.name))
        yield chunk


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
            _check_picture_size(image.width, image.height, L.MAX_IMAGE_PIXELS, "image", path)  # header only
            image = ImageOps.exif_transpose(image)  # also forces a full decode, so truncation shows here
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                # Transparent pixels keep arbitrary colours underneath; show them as white, as
                # qwen-omni-utils does, rather than whatever the RGB channels happen to hold.
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            return image.convert("RGB")
    except Image.DecompressionBombError as err:  # PIL's own, far larger, limit: refused in Image.open
        raise MediaError(f"This image has too many pixels to open ({path.name}).") from err
    except UnidentifiedImageError as err:  # its message repeats the full path; the name is enough
        raise MediaError(f"This file is not a readable image ({path.name}).") from err
    except (OSError, SyntaxError) as err:  # PIL reports damaged data as either ("image file is truncated")
        raise MediaError(f"This file is not a readable image: it is damaged or cut short ({path.name}).") from err


def _check_picture_size(width: int, height: int, max_pixels: int, what: str, path: Path) -> None:
    if width * height > max_pixels:
        raise MediaError(
            f"This {what} is {width}x{height}, {width * height / 1e6:.0f} megapixels; the limit is "
            f"{max_pixels / 1e6:.0f} megapixels ({path.name})."
        )
    if width < 1 or height < 1 or max(width, height) / min(width, height) > L.MAX_ASPECT_RATIO:
        raise MediaError(
            f"This {what} is {width}x{height}, too narrow for the model: at most {L.MAX_ASPECT_RATIO}:1 ({path.name})."
        )


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
        _refuse_declared_duration(_declared_seconds(container, stream), L.MAX_VIDEO_SECONDS, "Video", path)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:  # 0 where the header does not say; the first decoded frame is checked then
            _check_picture_size(width, height, L.MAX_VIDEO_FRAME_PIXELS, "video", path)
        total = _count_frames(container, stream, path)
        video_fps = _frame_rate(stream, container, total, path)
        has_audio = _first_stream(container.streams.audio, "audio", path) is not None
    if total == 0:
        raise MediaError(f"Video has no frames ({path.name}).")
    # The frames counted, not the header's duration: a header can claim any length.
    if total / video_fps > L.MAX_VIDEO_SECONDS + L.DECODE_SLACK_SECONDS:
        raise MediaError(_too_long("Video", total / video_fps, L.MAX_VIDEO_SECONDS, path.name))

    frames, times, decoded = _decode_sampled(path, total, video_fps, fps)
    if decoded != total:  # a packet that decodes to no frame: sample again from the true count
        total = decoded
        frames, times, decoded = _decode_sampled(path, total, video_fps, fps)
    if decoded == 0:
        raise MediaError(f"Video has no frames ({path.name}).")

    audio = None
    if with_audio and has_audio:
        with _open_media(path, "video file") as container:
            track = _first_stream(container.streams.audio, "audio", path)
            audio = _decode_audio(container, track, L.MAX_VIDEO_SECONDS, path, "The video's sound")
        # A track too short to give one audio token is no sound at all for the model.
        audio = audio if len(audio) >= L.MIN_AUDIO_SECONDS * INPUT_SAMPLE_RATE else None

    # The sampled rate as qwen-omni-utils reports it: nframes over the video's duration (total / fps).
    sampled_fps = len(frames) / total * video_fps
    return VideoClip(frames=np.stack(frames), timestamps=np.asarray(times), fps=sampled_fps, audio=audio)


def _count_frames(container, stream, path: Path) -> int:
    """Pass 1 demuxes without decoding; it stops counting past the most frames an allowed video can have."""
    most = int(L.MAX_VIDEO_SECONDS * L.MAX_VIDEO_SOURCE_FPS)
    total = 0
    for packet in container.demux(stream):
        total += bool(packet.size)
        if total > most:
            raise MediaError(
                f"Video has more than {most:,} frames; the limit is {L.MAX_VIDEO_SECONDS:.0f} s at up to "
                f"{L.MAX_VIDEO_SOURCE_FPS:.0f} frames per second ({path.name})."
            )
    return total


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
            if size is None:  # a stream may change size; keep the first
                _check_picture_size(frame.width, frame.height, L.MAX_VIDEO_FRAME_PIXELS, "video", path)
                size = (frame.width, frame.height)
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
            if not _not_media(container):
                if _first_stream(_moving_pictures(container), "video", path) is not None:
                    return "video"
                if _first_stream(container.streams.audio, "audio", path) is not None:
                    return "audio"
    except av.error.FFmpegError:
        pass
    raise MediaError(f"This file is not an image, audio or video file ({path.name}).")


def _existing_file(path: str | Path) -> Path:
    """The path of a file that exists, is not empty and is within the size limit: checked before opening."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"File not found ({path.name}).")
    size = path.stat().st_size
    if size == 0:
        raise MediaError(f"File is empty ({path.name}).")
    if size > L.MAX_UPLOAD_BYTES:
        raise MediaError(
            f"File is too large: {size / L.MIB:.1f} MB, the limit is {L.MAX_UPLOAD_BYTES / L.MIB:.0f} MB ({path.name})."
        )
    return path


def _not_media(container) -> bool:
    names = set(container.format.name.split(","))
    return bool(names & (_TEXT_DEMUXERS | _IMAGE_DEMUXERS)) or any(n.endswith("_pipe") for n in names)


@contextmanager
def _open_media(path: Path, what: str):
    """Open with PyAV; any FFmpeg error, while opening or decoding, becomes one MediaError."""
    try:
        with av.open(str(path)) as container:
            # FFmpeg "opens" some garbage after a valid header, finding nothing; and text as text art.
            if not container.streams or _not_media(container):
                reason = "no audio or video in it"
                raise MediaError(f"This file is not a readable {what} ({path.name}: {reason}).")
            yield container
    except av.error.InvalidDataError as err:  # FFmpeg's words: "Invalid data found when processing input"
        raise MediaError(f"This file is not a readable {what}: it is damaged or cut short ({path.name}).") from err
    except av.error.FFmpegError as err:
        reason = err.strerror or type(err).__name__
        raise MediaError(f"This file is not a readable {what} ({path.name}: {reason}).") from err
