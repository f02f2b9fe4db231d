"""What crosses the engine's boundary: an answer's settings, and the events `respond` streams out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model import constants as C
from model.engine.sampling import TALKER_DEFAULT, THINKER_DEFAULT, Sampling


@dataclass
class AnswerSettings:
    voice: str = "Chelsie"
    text_only: bool = False
    max_new_tokens: int = 1024
    talker_max_new_tokens: int = C.TALKER_MAX_NEW_TOKENS
    min_new_tokens: int = 0  # the thinker's EOS is suppressed until then (transformers' min_new_tokens)
    talker_min_new_tokens: int = 0  # likewise the talker's EOS codes: forces an answer's length (benchmarks)
    thinker: Sampling = field(default_factory=lambda: THINKER_DEFAULT)
    talker: Sampling = field(default_factory=lambda: TALKER_DEFAULT)
    seed: int | None = None
    # Record each greedy choice's top-2 margin (AnswerDone.token_margins, code_margins), for tests that compare
    # choices with transformers'; off by default: a top-k over the vocabulary and a host sync per step.
    margins: bool = False
    noise_seed: int | None = None  # token2wav's starting noise (fixed for reproducible audio)
    # token2wav chunks in mel frames (2 per code), multiples of the DiT block (24): the first speech after 24
    # codes, then chunks that double (48, 96, 192, 192, ...), so fewer overlapping windows per second of
    # speech; within the tolerance measured in docs/performance.md.
    first_chunk_frames: int = 24
    chunk_frames: int = 48
    max_chunk_frames: int = 192
    speech_thread: bool | None = None  # token2wav on its own thread; None: on CUDA only (speech_worker.py)
    solver: str = "rk4"  # "rk4" (the reference) or "euler" (a quarter of the DiT passes)
    num_steps: int = 10  # ODE time points


@dataclass
class TextDelta:
    """One chosen token and the text it adds (empty while a multi-byte character is incomplete). The token
    travels with it, so a consumer that stops early still knows exactly what the model said."""

    text: str
    token: int = -1


@dataclass
class AudioChunk:
    samples: np.ndarray  # float32, mono
    sample_rate: int = C.OUTPUT_SAMPLE_RATE


@dataclass
class Timings:
    """Seconds from the end of the user's input: the call to `end_user_turn` (live) or `add_user_turn`,
    so the encoding and prefill of what was left when the user stopped count too."""

    first_text: float | None = None
    first_audio: float | None = None
    total: float = 0.0
    tokens: int = 0
    codes: int = 0
    audio_seconds: float = 0.0


@dataclass
class AnswerDone:
    text: str
    tokens: list[int]
    codes: list[int]
    timings: Timings
    interrupted: bool = False
    token_margins: list[float] = field(default_factory=list)  # greedy top-2 margins, when asked (see TokenChooser)
    code_margins: list[float] = field(default_factory=list)


@dataclass
class ContextTrimmed:
    """The conversation outgrew the model's positions: its oldest exchanges were dropped."""

    dropped_turns: int
    message: str


@dataclass
class SpeechPending:
    """The answer's last speech is still being made on its own thread: nothing new yet. A consumer that serves
    other conversations too (the app's model worker) can do their work and come back."""


Event = TextDelta | AudioChunk | AnswerDone | ContextTrimmed | SpeechPending
