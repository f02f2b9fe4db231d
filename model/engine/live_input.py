"""A live turn's timeline: what the user said and showed, and what each 2 s window of the prompt holds.

The rule at the centre of the live path: a live turn's prompt is a function of its content alone, the
audio samples and the camera frames with their timestamps. Chunk sizes, the order in which audio and frames
arrive, camera lag and a restore change nothing. `LiveTimeline` holds that content and decides from it:

* **Frames on the model's 2 fps grid.** The turn's video is one slot per 0.5 s from the turn's start; slot
  j (at j/2 s) takes the latest frame taken at or before it. A slower camera repeats frames, a faster one is
  thinned. Slots before the first frame take the first frame (what the camera showed as it came on). A
  turn with sound has as many slots as its sound lasts; a camera-only turn ends with its last frame.
* **Windows.** The model reads a video with its sound as 2 s windows (thinker `seconds_per_chunk`): window
  k holds slots 4k..4k+3 (two frame pairs, its video tokens) and samples [2k s, 2k+2 s) (its audio
  tokens). Qwen2.5-Omni's audio encoder encodes 2 s blocks independently, so each window can be encoded on
  its own. Qwen3-Omni's attends within 8 s groups (`group_samples`): a window's tokens depend on every
  window of its group, so its plan says how much of the group is in (`Window.group_samples`), a group's
  windows settle together once all its 8 s are in (`unit`), and the turn's final cache is the whole turn's
  encoding. A window whose group changes anyway (a late frame) is redone like any other.
  A last window's sound shorter than `MIN_WINDOW_SAMPLES` gives no audio token and is left out.
* **When a window is settled while the user still speaks**: its 2 s of sound are in, and the camera has
  delivered a frame at or past the window's last slot (no later frame can change what its slots take), or
  has delivered none (no camera so far), or has been silent for `STALL_SECONDS` of sound past the window's
  end. A stalled camera then reads as a frozen one: its last frame is held.

A settled window is a guess about the future only in the last two cases: a frame may still come that
belongs in a window already prefilled (a camera switched on mid-turn, a frame later than the bound). The
session then rolls its caches back to that window and prefills again (`plan` says what each window holds
now; a changed plan is a rollback). So the content rule always holds; the bound only decides how much
work a late camera can waste. `STALL_SECONDS` is 1 s: two frames at the model's 2 fps, so a camera that
misses one frame, or a 1 fps camera, never costs a rollback, while a stalled camera delays the prefill
by at most 1 s of speech (at the end of the turn every open window is encoded anyway).

Frames with the same timestamp as one already given are ignored (a camera never repeats a time).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from model import constants as C

SECONDS_PER_WINDOW = 2  # thinker config `seconds_per_chunk`
SAMPLES_PER_WINDOW = SECONDS_PER_WINDOW * C.INPUT_SAMPLE_RATE
SLOTS_PER_WINDOW = int(SECONDS_PER_WINDOW * C.VIDEO_FPS)
SLOT_SECONDS = 1 / C.VIDEO_FPS
STALL_SECONDS = 1.0
MEL_HOP = 160  # samples per log-mel frame (WhisperFeatureExtractor hop_length)
# The fewest samples that give an audio token: 3 mel frames (stride-2 conv, then stride-2 pooling), as the
# processor's token rule counts them (checked in tests/test_families.py).
MIN_WINDOW_SAMPLES = 2 * MEL_HOP + 1
_EPSILON = 1e-6  # seconds: float timestamps that should be equal


@dataclass(frozen=True)
class Window:
    """What window `index` of a live turn holds: enough to tell whether a prefilled window still stands."""

    index: int
    audio_samples: int  # its samples (from index * SAMPLES_PER_WINDOW on); 0: none
    frames: tuple[int, ...]  # the frame id in each of its slots; () without a camera
    camera: bool  # the turn has pictures (the prompt's markers depend on it)
    sound: bool  # the turn has sound
    group_samples: int = 0  # the sound of its audio encoder group encoded with it (0: it encodes alone)

    @property
    def audio_start(self) -> int:
        return self.index * SAMPLES_PER_WINDOW


class LiveTimeline:
    """One live turn's content, in any order and chunking, and the windows it makes. `group_samples`: the
    audio encoder's attention group in samples, a multiple of the window (0: each window encodes alone)."""

    def __init__(self, group_samples: int = 0):
        self.group_samples = group_samples
        self.unit = max(1, group_samples // SAMPLES_PER_WINDOW)  # windows that settle, and are prefilled, together
        self._audio: list[np.ndarray] = []
        self.samples = 0
        self._joined: np.ndarray | None = None
        self._times: list[float] = []  # frame timestamps, sorted
        self._ids: list[int] = []  # frame id at each sorted position
        self._frames: list[np.ndarray] = []  # by frame id (the order given)

    # ---------------------------------------------------------------- content in

    def add_audio(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(samples):
            self._audio.append(samples)
            self.samples += len(samples)
            self._joined = None

    def add_frame(self, frame: np.ndarray, seconds: float) -> bool:
        """A camera frame taken `seconds` after the turn began; False if one with that time was given."""
        seconds = max(0.0, float(seconds))
        at = bisect.bisect_left(self._times, seconds - _EPSILON)
        if at < len(self._times) and abs(self._times[at] - seconds) <= _EPSILON:
            return False
        self._times.insert(at, seconds)
        self._ids.insert(at, len(self._frames))
        self._frames.append(np.asarray(frame, dtype=np.uint8))
        return True

    @property
    def camera(self) -> bool:
        return bool(self._frames)

    @property
    def empty(self) -> bool:
        return self.samples == 0 and not self._frames

    def audio(self) -> np.ndarray:
        if self._joined is None:
            self._joined = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
            self._audio = [self._joined] if self.samples else []
        return self._joined

    def frame(self, frame_id: int) -> np.ndarray:
        return self._frames[frame_id]

    # ---------------------------------------------------------------- windows out

    def kept_samples(self) -> int:
        """The turn's sound as the prompt holds it: a last window too short for one token is left out."""
        tail = self.samples % SAMPLES_PER_WINDOW
        return self.samples - tail if 0 < tail < MIN_WINDOW_SAMPLES else self.samples

    def slot_count(self) -> int:
        """Slots of the whole turn (once it has ended)."""
        if not self._frames:
            return 0
        if self.kept_samples():
            return math.ceil(self.kept_samples() / C.INPUT_SAMPLE_RATE / SLOT_SECONDS - _EPSILON)
        return int(self._times[-1] / SLOT_SECONDS + _EPSILON) + 1

    def window_count(self) -> int:
        """Windows of the whole turn (once it has ended)."""
        audio_windows = math.ceil(self.kept_samples() / SAMPLES_PER_WINDOW)
        return max(audio_windows, math.ceil(self.slot_count() / SLOTS_PER_WINDOW))

    def settled_count(self) -> int:
        """Leading windows that can be prefilled while the turn goes on (see the module's docstring)."""
        windows = self.samples // SAMPLES_PER_WINDOW
        if self._frames:
            camera_covers = int((self._times[-1] + SLOT_SECONDS) / SECONDS_PER_WINDOW + _EPSILON)
            stalled = math.floor((self.samples / C.INPUT_SAMPLE_RATE - STALL_SECONDS) / SECONDS_PER_WINDOW + _EPSILON)
            windows = min(windows, max(camera_covers, stalled))
        return windows - windows % self.unit

    def units(self, start: int, end: int) -> list[range]:
        """Windows [start, end) cut at the audio encoder's group boundaries: what one forward pass prefills."""
        cuts = [start, *range(start - start % self.unit + self.unit, end, self.unit), end]
        return [range(a, b) for a, b in pairwise(cuts) if b > a]

    def plan(self, index: int, final: bool) -> Window:
        """What window `index` holds: as the turn stands (`final` False: a settled window) or once it has
        ended (`final` True: the last window may be shorter)."""
        start = index * SAMPLES_PER_WINDOW
        if final:
            audio = max(0, min(self.kept_samples() - start, SAMPLES_PER_WINDOW))
            slots = range(index * SLOTS_PER_WINDOW, min((index + 1) * SLOTS_PER_WINDOW, self.slot_count()))
            sound = self.kept_samples() > 0
        else:
            audio, slots, sound = SAMPLES_PER_WINDOW, range(index * SLOTS_PER_WINDOW, (index + 1) * SLOTS_PER_WINDOW), True
        frames = tuple(self._slot_frame(j) for j in slots) if self._frames else ()
        group = 0
        if self.group_samples and audio:
            group_start = start - start % self.group_samples
            known = self.kept_samples() if final else self.samples // SAMPLES_PER_WINDOW * SAMPLES_PER_WINDOW
            group = min(known, group_start + self.group_samples) - group_start
        return Window(index, audio, frames, self.camera, sound, group)

    def window_audio(self, window: Window) -> np.ndarray:
        return self.audio()[window.audio_start : window.audio_start + window.audio_samples]

    def group_audio(self, window: Window) -> tuple[list[np.ndarray], int]:
        """The sound of each window of `window`'s audio encoder group, as far as its plan holds it, and its own
        place among them."""
        start = window.audio_start - window.audio_start % self.group_samples
        end = start + window.group_samples
        pieces = [self.audio()[at : min(at + SAMPLES_PER_WINDOW, end)] for at in range(start, end, SAMPLES_PER_WINDOW)]
        return pieces, (window.audio_start - start) // SAMPLES_PER_WINDOW

    def slot_frames(self) -> list[tuple[np.ndarray, float]]:
        """The whole turn's video on the 2 fps grid, (frame, slot time): the canonical form of its pictures
        (what a restore replays)."""
        return [(self._frames[self._slot_frame(j)], j * SLOT_SECONDS) for j in range(self.slot_count())]

    def _slot_frame(self, slot: int) -> int:
        latest = bisect.bisect_right(self._times, slot * SLOT_SECONDS + _EPSILON) - 1
        return self._ids[max(0, latest)]
