"""Microphone chunks to 16 kHz and webcam frames to a bounded size."""

from __future__ import annotations

import numpy as np
import pytest
from speech import BROWSER_RATE, chunks, speech_48k

from model.inputs.media import prepare_audio
from omni_demo.capture import CAMERA_MAX_PIXELS, MicResampler, camera_frame, to_mono_float


def test_chunked_resampling_equals_resampling_the_whole_stream():
    """A resampler kept across 0.2 s chunks gives the same audio as one pass (no edges at chunk seams)."""
    speech = speech_48k()
    resample = MicResampler()
    streamed = np.concatenate([resample(rate, chunk) for rate, chunk in chunks(speech)])
    whole = prepare_audio(speech, BROWSER_RATE)
    # The streaming filter still holds its last few samples (it is never flushed mid-conversation).
    assert len(whole) - 64 <= len(streamed) <= len(whole)
    np.testing.assert_allclose(streamed, whole[: len(streamed)], atol=1e-5)


def test_stereo_and_44k_are_reduced_to_16k_mono():
    t = np.arange(44_100) / 44_100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    stereo = np.stack([tone, tone], axis=1)
    out = MicResampler()(44_100, stereo)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 16_000) < 64
    spectrum = np.abs(np.fft.rfft(out[1000:15000]))
    assert abs(np.argmax(spectrum) * 16_000 / 14_000 - 440) < 3  # the same tone, at the new rate


def test_int16_scaling():
    np.testing.assert_array_equal(to_mono_float(np.array([-32768, 0, 16384], np.int16)), [-1.0, 0.0, 0.5])


def test_camera_frames_are_bounded_and_never_enlarged():
    big = np.zeros((1080, 1920, 3), np.uint8)
    small = camera_frame(big)
    assert small.shape[0] * small.shape[1] <= CAMERA_MAX_PIXELS * 1.02
    assert abs(small.shape[1] / small.shape[0] - 1920 / 1080) < 0.02  # aspect kept
    tiny = np.zeros((120, 160, 4), np.uint8)
    assert camera_frame(tiny).shape == (120, 160, 3)  # alpha dropped, size kept
    with pytest.raises(ValueError):
        camera_frame(np.zeros((10, 10), np.uint8))
