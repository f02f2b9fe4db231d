"""Video frames -> the vision encoder's patches, as transformers' `Qwen2VLVideoProcessor` lays them out.

transformers' video processor needs torchvision, which cannot be installed on every machine this runs on;
this module does the same work with torch alone and gives the same tensors:

- each frame is resized to a multiple of 28 pixels (patch 14 x merge 2) inside a pixel budget
  (`smart_resize`), bicubic with antialiasing;
- pixels are scaled to [0, 1] and normalised with the CLIP mean/std, fused into one subtract and divide as
  transformers does (so the float32 rounding is the same too);
- frames go in temporal pairs (an odd count repeats the last frame), and each pair is cut into 14x14
  patches ordered so that every 2x2 group the encoder merges into one token is contiguous.

Output: `pixel_values_videos` float32 [sum(t*h*w), 3*2*14*14] and `video_grid_thw` int64 [videos, 3].

On the resize: transformers calls torchvision's `resize`, which on a CPU hands a uint8 frame stack straight
to `torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)`; that kernel works
in uint8 with fixed-point weights and rounds once per pass, like Pillow. `resize_frames` makes that same call
on the same uint8 tensor, so on a CPU it is the same kernel on the same input: identical output. Where it
differs from other resizers (the tests measure each):
- torchvision on a GPU resizes in float32 and rounds once at the end (`resize_frames_float`). Where the
  cubic's overshoot stays inside 0..255 that is within 1 level of ours (a fifth of a level on average); at
  hard edges the uint8 kernel clips between its horizontal and vertical pass and the float path does not,
  and they part by more (up to about 20 levels on white noise). Only the CPU path is what transformers runs
  by default, and that is the one we match.
- PIL's BICUBIC (what `Qwen2VLImageProcessorPil` uses for images) has the same a = -0.5 antialiased cubic
  and also clips between passes, with its own fixed-point rounding: within 2 levels of ours, and at most a
  few percent of the values differ at all (measured in the tests).
- plain `interpolate(mode="bicubic")` without antialiasing (a = -0.75, no low-pass when shrinking) is not
  close when shrinking, and is not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.inputs.limits import MAX_ASPECT_RATIO

# Qwen2_5OmniProcessor passes these to its video processor on every call (its class-level `videos_kwargs`),
# overriding the `min_pixels`/`max_pixels` of preprocessor_config.json, which are the image budget
# (3136 .. 12845056). A video frame therefore gets 128 to 768 tokens' worth of pixels (28x28 per token).
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (height, width) transformers resizes a frame to: multiples of `factor`, the aspect ratio kept as
    well as rounding allows, the area inside [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"a {height}x{width} frame is more elongated than {MAX_ASPECT_RATIO}:1")
    # Python's round (half to even), as transformers uses: a different rounding changes the grid.
    new_h = round(height / factor) * factor
    new_w = round(width / factor) * factor
    if new_h * new_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / shrink / factor) * factor)
        new_w = max(factor, math.floor(width / shrink / factor) * factor)
    elif new_h * new_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * grow / factor) * factor
        new_w = math.ceil(width * grow / factor) * factor
    return new_h, new_w


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, C, H, W) -> uint8 (T, C, height, width), bicubic with antialiasing, as torchvision on a CPU."""
    if frames.shape[-2:] == (height, width):
        return frames  # torchvision returns the input untouched at the same size
    return F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def resize_frames_float(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's bicubic path for GPU tensors: the same kernel in float32, clamped and rounded back to uint8
    at the end. Not what transformers runs by default; kept so the tests can measure how far apart they are."""
    if frames.shape[-2:] == (height, width):
        return frames
    resized = F.interpolate(frames.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp_(0, 255).round_().to(torch.uint8)


@dataclass(frozen=True)
class VideoFrameProcessor:
    """Qwen2-VL video preprocessing with torch only; `__call__` matches `Qwen2VLVideoProcessor` as
    Qwen2_5OmniProcessor calls it (frames already sampled, no per-video pixel cap)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    rescale_factor: float = 1 / 255

    @classmethod
    def from_config(cls, config: dict) -> VideoFrameProcessor:
        """From a checkpoint's preprocessor_config.json (as a dict). Its min/max_pixels are the image budget
        and are not used: see VIDEO_MIN_PIXELS."""
        fields = ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor")
        values = {name: config[name] for name in fields if name in config}
        for name in ("image_mean", "image_std"):
            if name in config:
                values[name] = tuple(config[name])
        return cls(**values)

    @property
    def factor(self) -> int:
        """Side in pixels of the square that becomes one token."""
        return self.patch_size * self.merge_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid_thw(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Patch grid of a video of `num_frames` frames of height x width pixels (before resizing)."""
        new_h, new_w = self.resized_size(height, width)
        grid_t = -(-num_frames // self.temporal_patch_size)  # an odd last frame is repeated, not dropped
        return grid_t, new_h // self.patch_size, new_w // self.patch_size

    def num_tokens(self, num_frames: int, height: int, width: int) -> int:
        """Tokens the thinker sees for this video: one per merged 2x2 group of patches."""
        return math.prod(self.grid_thw(num_frames, height, width)) // self.merge_size**2

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32, (x / 255 - mean) / std computed as transformers' fused form (x - 255 mean) / (255 std),
        so the float32 roundings are the same as there."""
        mean = torch.tensor(self.image_mean) * (1.0 / self.rescale_factor)
        std = torch.tensor(self.image_std) * (1.0 / self.rescale_factor)
        return (frames.to(torch.float32) - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)

    def patchify(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Normalised float (T, C, H, W) -> (grid_t * grid_h * grid_w, C * temporal * patch * patch).

        Rows go frame pair by frame pair, then over 2x2 merge groups in raster order, then over the four
        patches inside a group; each row holds the patch as (channel, frame of the pair, y, x).
        """
        pad = -frames.shape[0] % self.temporal_patch_size
        if pad:
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        t, c, h, w = frames.shape
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        grid = (t // tp, h // p, w // p)
        patches = frames.reshape(grid[0], tp, c, grid[1] // m, m, p, grid[2] // m, m, p)
        # -> (pair, group row, group col, row in group, col in group, channel, frame in pair, y, x)
        patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return patches.reshape(math.prod(grid), c * tp * p * p), grid

    def preprocess_video(self, video: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One (T, H, W, 3) uint8 video -> its patches and grid."""
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or video.shape[0] == 0:
            raise ValueError(f"a video must be a (T, H, W, 3) uint8 array with T >= 1, got {video.dtype} {video.shape}")
        # Same memory layout as transformers gives the kernel (contiguous T, C, H, W).
        frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).contiguous()
        frames = resize_frames(frames, *self.resized_size(*frames.shape[-2:]))
        return self.patchify(self.normalize(frames))

    def __call__(self, videos: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        patches, grids = zip(*(self.preprocess_video(video) for video in videos))
        return {
            "pixel_values_videos": torch.cat(patches),
            "video_grid_thw": torch.tensor(grids, dtype=torch.int64),
        }
