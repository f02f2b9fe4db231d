"""Live input, prefilled while the user is still speaking: 2 s windows of microphone audio and webcam frames.

The model reads a video with its sound as 2 s windows, each the window's video tokens then its audio tokens
(TMRoPE, `seconds_per_chunk` 2). The audio encoder encodes 2 s blocks independently (n_window 100 -> 200
mel frames) and the vision encoder each frame pair independently, so every completed window can be encoded
and prefilled on its own, and at the end of the turn only the unfinished last window and the closing
tokens remain.

One difference from encoding the whole clip at once: Whisper's log-mel clamps each clip to 8 below its own
maximum, a whole-clip statistic, so a window's features are computed from that window alone and can differ
slightly from the same frames of a whole-clip log-mel. The engine's reference for live input is therefore
transformers fed these same per-window features (tests/test_live_input.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model import constants as C

SECONDS_PER_WINDOW = 2  # thinker config `seconds_per_chunk`
SAMPLES_PER_WINDOW = SECONDS_PER_WINDOW * C.INPUT_SAMPLE_RATE
FRAMES_PER_WINDOW = int(SECONDS_PER_WINDOW * C.VIDEO_FPS)


@dataclass
class LiveTurn:
    """What one live user turn has received and what of it is already in the thinker's cache."""

    audio: list[np.ndarray] = field(default_factory=list)  # 16 kHz mono float32 chunks as they came
    audio_samples: int = 0
    frames: list[np.ndarray] = field(default_factory=list)  # RGB uint8, one per 0.5 s (2 fps)
    next_frame_time: float = 0.0  # seconds: frames arriving before this are dropped (2 fps sampling)
    windows_done: int = 0
    # Everything the turn has put in the prompt so far, for the rope ids of what follows.
    ids: list[int] = field(default_factory=list)
    audio_frames: int = 0  # mel frames encoded so far
    video_grids: int = 0  # frame pairs encoded so far
    video_grid_hw: tuple[int, int] | None = None
    features: list[torch.Tensor] = field(default_factory=list)  # per-window log-mel (128, frames)
    started: bool = False

    def audio_array(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)

    @property
    def has_camera(self) -> bool:
        return bool(self.frames) or self.video_grids > 0

    def window_ready(self, index: int) -> bool:
        """A window is ready when its 2 s of audio are in (and its frames, if the camera is on)."""
        audio_in = self.audio_samples >= (index + 1) * SAMPLES_PER_WINDOW
        frames_in = len(self.frames) >= (index + 1) * FRAMES_PER_WINDOW
        if self.audio_samples == 0:  # camera only
            return frames_in
        return audio_in and (frames_in or not self.frames)
