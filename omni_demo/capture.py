"""What the browser streams in: microphone chunks to 16 kHz mono, webcam frames to a bounded size.

Gradio's streaming microphone hands over (rate, int16 samples) of only the new audio, at the browser's rate
(48 kHz, some machines 44.1 kHz), sometimes stereo. The resampler is kept across chunks: resampling each
chunk on its own would put filter edges into the audio every chunk.
"""

from __future__ import annotations

import av
import numpy as np
from PIL import Image

from model import constants as C

# One webcam frame pair costs (width / 28) x (height / 28) thinker tokens: 448 x 336 gives 192 per pair,
# 384 per 2 s window beside the window's 50 audio tokens. A 640 x 480 camera is scaled down to that.
CAMERA_MAX_PIXELS = 448 * 336


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels), integer or float PCM -> (n,) float32 in [-1, 1)."""
    samples = np.asarray(samples)
    if np.issubdtype(samples.dtype, np.integer):
        scale = float(2 ** (np.iinfo(samples.dtype).bits - 1))
        samples = samples.astype(np.float32) / scale
    samples = samples.astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32) if samples.ndim == 2 else samples.reshape(-1)


class MicResampler:
    """One microphone stream's chunks -> 16 kHz mono float32, continuous across chunks."""

    def __init__(self, target_rate: int = C.INPUT_SAMPLE_RATE):
        self.target_rate = target_rate
        self._rate: int | None = None
        self._resampler: av.AudioResampler | None = None

    def __call__(self, rate: int, samples: np.ndarray) -> np.ndarray:
        mono = to_mono_float(samples)
        if rate == self.target_rate or mono.size == 0:
            return mono
        if rate != self._rate:  # a new device: start a fresh filter
            self._rate = rate
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.target_rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono)[None], format="flt", layout="mono")
        frame.sample_rate = rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def camera_frame(frame: np.ndarray, max_pixels: int = CAMERA_MAX_PIXELS) -> np.ndarray:
    """An RGB uint8 webcam frame, scaled down (never up) to at most `max_pixels`."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"a camera frame must be (height, width, 3), got {frame.shape}")
    frame = frame[:, :, :3]
    height, width = frame.shape[:2]
    scale = (max_pixels / (height * width)) ** 0.5
    if scale >= 1:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    size = (max(28, round(width * scale)), max(28, round(height * scale)))
    return np.asarray(Image.fromarray(frame.astype(np.uint8)).resize(size, Image.BILINEAR))
