"""The Space's header and pins are versions ZeroGPU accepts, and the code imports on the header's Python.

ZeroGPU's documented versions (huggingface/hub-docs, docs/hub/spaces-zerogpu.md, its copy of 2026-08-22, and
hub-docs PR #2763, merged 2026-09-04, which adds 2.12.1 and 2.13.0): a torch pin outside them fails the
Space's build."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ZEROGPU_PYTHONS = {"3.12": "3.12.12", "3.10": "3.10.13"}
ZEROGPU_TORCH = {"2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", "2.13.0"}


def header() -> dict:
    text = (ROOT / "README.md").read_text()
    block = text.split("---\n")[1]
    return dict(re.findall(r'^(\w+): "?([^"\n]+)"?$', block, flags=re.MULTILINE))


def test_the_header_asks_for_a_python_zerogpu_runs():
    assert header()["python_version"] in ZEROGPU_PYTHONS


def test_the_torch_pin_is_one_zerogpu_installs():
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1 and pins[0].removeprefix("torch==") in ZEROGPU_TORCH


def test_the_code_compiles_on_the_headers_python(tmp_path):
    """That minor version of Python, where this machine has one (pyenv's); the dependencies are not installed
    there, so this proves the syntax, not the imports."""
    minor = header()["python_version"]
    found = sorted((Path.home() / ".pyenv" / "versions").glob(f"{minor}.*/bin/python"))
    if not found:
        pytest.skip(f"no Python {minor} on this machine")
    python = found[-1]
    folders = [str(ROOT / name) for name in ("model", "omni_demo", "bench", "app.py")]
    result = subprocess.run(
        [str(python), "-m", "compileall", "-q", *folders],
        capture_output=True,
        text=True,
        env={"PYTHONPYCACHEPREFIX": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
