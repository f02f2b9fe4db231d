"""GPU reservation on Hugging Face ZeroGPU Spaces, and nothing elsewhere.

`spaces.GPU` is a no-op unless the Space runs on ZeroGPU (SPACES_ZERO_GPU set); there it runs the function
in a forked worker that holds a GPU for `duration` seconds. Decorate one function per conversation turn,
never the per-chunk stream handlers.
"""

from __future__ import annotations

import os


def on_zero_gpu() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def on_spaces() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def gpu(duration):
    try:
        import spaces
    except ImportError:  # `spaces` is only needed on Spaces
        return lambda function: function
    return spaces.GPU(duration=duration)
