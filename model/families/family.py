"""The contract every model family fulfils, written down once: the parts a family provides to the loader, the
engine, the page, the tiny checkpoint builder and the oracle tests. Each folder beside this file holds one
family's parts under the same file names; its `__init__.py` makes the `Family` that names them, and
model/families/__init__.py registers it by config.json's `model_type`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from model.engine.family import EngineParts
from model.engine.sampling import Sampling


class LoadError(RuntimeError):
    """A checkpoint could not be loaded; the message says what to do about it."""


class Family(ABC):
    """One model family. The facts are class attributes; the parts are methods, each backed by one file of the
    family's folder (named in its docstring)."""

    # What the loader, the page and the command line read.
    model_type: ClassVar[str]  # config.json's `model_type`
    name: ClassVar[str]  # shown on the page ("Qwen2.5-Omni")
    released: ClassVar[dict[str, float]]  # hub id -> free GPU GiB `--model auto` asks for before choosing it
    default_voice: ClassVar[str]
    system_prompt: ClassVar[str]  # the page's and the session's default
    prompt_is_fixed: ClassVar[bool]  # speech only under `system_prompt`
    talker: ClassVar[Sampling]  # the talker's sampling in transformers' generate
    tiny: ClassVar[str]  # `--model` name of its tiny checkpoint
    tiny_family: ClassVar[str]  # `python -m model.tiny --family` name
    tiny_version: ClassVar[str]  # bumped when its tiny builder changes what it writes (cached copies rebuild)

    @abstractmethod
    def check_checkpoint(self, directory: Path, config: dict) -> None:
        """Raise LoadError unless `directory` holds what loading needs beyond config.json and the weights
        (loading.py)."""

    @abstractmethod
    def load_model(self, directory: Path, device: torch.device, dtype: torch.dtype, attn: str):
        """transformers' model class with the checkpoint's weights, in eval mode (loading.py)."""

    @abstractmethod
    def load_voices(self, directory: Path, config: dict, model) -> dict[str, dict]:
        """Voice name -> what the talker and vocoder read for it; the page lists the names (loading.py)."""

    @abstractmethod
    def load_processor(self, directory: Path):
        """Text, audio, images and video -> the thinker's inputs, as transformers' processor makes them
        (processing.py)."""

    @abstractmethod
    def engine_parts(self, model, processor) -> EngineParts:
        """What the engine runs for this family: talker inputs (talker_inputs.py), talker (talker_stream.py)
        and vocoder stream (vocoder.py)."""

    @abstractmethod
    def build_tiny(self, out_dir: str | Path) -> Path:
        """A tiny random-weight checkpoint at full depth, in the released file layout (tiny.py)."""

    @abstractmethod
    def reference_generate(self, loaded, conversation, **options):
        """transformers' own generate on the same weights: the oracle the engine is checked against
        (reference.py)."""

    # What the benchmark (bench/) asks of a family.
    @abstractmethod
    def codes_per_second(self, model) -> float:
        """Talker steps per second of speech (a step's code, or frame of codes)."""

    @abstractmethod
    def forced_reference(self, loaded, conversation, *, voice: str, tokens: int, codes: int, seed: int):
        """transformers' greedy answer of exactly `tokens` thinker tokens and `codes` talker steps (reference.py)."""

    @abstractmethod
    def describe_vocoder(self, dtype: str) -> str:
        """The vocoder and the dtype it runs in, given the thinker's ("float32 token2wav")."""

    def __repr__(self) -> str:
        return f"<family {self.model_type}>"


FACTS = tuple(Family.__annotations__)


def missing_parts(family: type[Family]) -> list[str]:
    """What `family` lacks of the contract: facts not set and parts not provided (empty: complete)."""
    lacking = [fact for fact in FACTS if not hasattr(family, fact)]
    return lacking + sorted(getattr(family, "__abstractmethods__", ()))
