"""Shared fixtures: the tiny checkpoint (built once per run) and the model loaded from it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's: a real browser without a download

# Tests never reach the hub; a test that tries must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from model.loading import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def loaded(tiny_dir):
    """The tiny model, its processor and voices, loaded through the same function users run."""
    from model.loading import load_omni

    return load_omni(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory) -> Path:
    from model.families import QWEN3_OMNI
    from model.loading import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen3-omni", QWEN3_OMNI.tiny)


@pytest.fixture(scope="session")
def qwen3_loaded(qwen3_dir):
    """The tiny Qwen3-Omni, loaded through the same function users run."""
    from model.loading import load_omni

    return load_omni(str(qwen3_dir), device="cpu")


@pytest.fixture(scope="session")
def playwright():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run does)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    api = pytest.importorskip("playwright.sync_api")
    with api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def camera_video(tmp_path_factory) -> Path:
    """4 s of 320x240 video at 10 fps as a y4m file (what Chrome's fake camera plays): a bar moving right."""
    width, height, fps = 320, 240, 10
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(4 * fps):
            luma = np.full((height, width), 70, np.uint8)
            luma[:, (i * 8) % (width - 40) :][:, :40] = 220
            chroma = np.full((height // 2, width // 2), 128, np.uint8)
            f.write(b"FRAME\n" + luma.tobytes() + chroma.tobytes() + chroma.tobytes())
    return path


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


class ReferenceHarness:
    """transformers' own outputs on the tiny model for each input case, computed once per run.

    Greedy thinker and talker, and a fixed token2wav noise, so each result is reproducible."""

    max_new_tokens = 24
    noise_seed = 0

    def __init__(self, loaded):
        self.loaded = loaded
        self._results = {}

    def conversation(self, name: str):
        from model.inputs import cases

        if name == "second_turn":
            return cases.second_turn_case(self.result("text").text)
        return cases.SINGLE_TURN_CASES[name]()

    def result(self, name: str, voice: str = "Chelsie"):
        from model.families.qwen2_5_omni.reference import TalkerSampling, reference_generate

        key = (name, voice)
        if key not in self._results:
            self._results[key] = reference_generate(
                self.loaded,
                self.conversation(name),
                voice=voice,
                max_new_tokens=self.max_new_tokens,
                talker=TalkerSampling(greedy=True),
                noise_seed=self.noise_seed,
            )
        return self._results[key]


HARNESS_CASES = ["text", "audio", "image", "video_with_sound", "silent_video", "second_turn"]


@pytest.fixture(scope="session")
def harness(loaded) -> ReferenceHarness:
    return ReferenceHarness(loaded)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(loaded):
    """The app around `loaded` on a real Gradio server on loopback: yields (App, URL), then shuts it down."""
    from omni_demo.ui import build_app

    app = build_app(loaded)
    _, url, _ = app.demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, max_threads=80
    )
    yield app, url
    app.demo.close()
    app.sessions.close_all()
    app.worker.stop()


@pytest.fixture(scope="session")
def live_app(loaded):
    """The app with the tiny model: (App, URL)."""
    yield from served(loaded)


@pytest.fixture(scope="session")
def server(live_app) -> str:
    return live_app[1]


@pytest.fixture(scope="module")
def qwen3_app(qwen3_loaded):
    """The app with the tiny Qwen3-Omni, on its own server: (App, URL)."""
    yield from served(qwen3_loaded)
