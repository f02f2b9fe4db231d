"""One window of token2wav: Qwen2.5-Omni's DiT flow-matching solve (codes and a voice to mel) and its BigVGAN
vocoder (mel to 24 kHz audio), with the voice prepared once per model.

transformers' `Qwen2_5OmniToken2WavModel.forward` runs both over a whole answer; the streaming decoder
(vocoder.py) runs them window by window. A whole answer that fits one window is `decode_whole`, which is
exactly transformers' decode.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model import constants as C
from model.engine.batched_step import Step
from model.families.qwen2_5_omni.dit_window import (
    MIN_GUIDANCE_SCALE,
    DiTWindow,
    TimeModulation,
    VoiceCondition,
)

# transformers' token2wav defaults (`Qwen2_5OmniToken2WavModel.forward`).
ODE_TIME_POINTS = 10  # RK4 over 9 intervals: 36 DiT passes per window; Euler: 9
GUIDANCE_SCALE = 0.5  # classifier-free guidance
SWAY_COEFFICIENT = -1.0  # t' = t + sway * (cos(pi t / 2) - 1 + t); -1 gives 1 - cos(pi t / 2)

SOLVERS = ("rk4", "euler")


# ---------------------------------------------------------------------------------------------------------
# The flow-matching solve (one window) and the vocoder


def ode_time_points(num_steps: int, sway: float | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The warped time grid of `Qwen2_5OmniToken2WavDiTModel.sample`, value for value."""
    times = torch.linspace(0, 1, num_steps, device=device, dtype=dtype)
    if sway is not None:
        times = times + sway * (torch.cos(torch.pi / 2 * times) - 1 + times)
    return times


def integrate_euler(velocity, start: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    value = start
    for time_start, time_end in zip(times[:-1], times[1:]):
        value = value + (time_end - time_start) * velocity(time_start, value)
    return value


def integrate_rk4(velocity, start: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """transformers' `RungeKutta4ODESolver.integrate` (the 3/8-rule step), written with the same operations in
    the same order so that the result is bit for bit the same."""
    one_third, two_thirds = 1 / 3, 2 / 3
    value = start
    for time_start, time_end in zip(times[:-1], times[1:]):
        step = time_end - time_start
        k1 = velocity(time_start, value)
        k2 = velocity(time_start + step * one_third, value + step * k1 * one_third)
        k3 = velocity(time_start + step * two_thirds, value + step * (k2 - k1 * one_third))
        k4 = velocity(time_end, value + step * (k1 - k2 + k3))
        value = value + (k1 + 3 * (k2 + k3) + k4) * step / 8
    return value


INTEGRATORS = {"rk4": integrate_rk4, "euler": integrate_euler}


@dataclass(frozen=True)
class FlowSettings:
    """How each window's ODE is solved; the defaults are transformers'."""

    solver: str = "rk4"
    num_steps: int = ODE_TIME_POINTS  # time points, including t = 0 and t = 1
    guidance_scale: float = GUIDANCE_SCALE
    sway: float | None = SWAY_COEFFICIENT

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.num_steps < 2:
            raise ValueError(f"num_steps counts time points including both ends; it must be >= 2, got {self.num_steps}")


@dataclass(frozen=True)
class Voice:
    """A speaker from spk_dict.pt, as float32 tensors on the DiT's device."""

    cond: torch.Tensor  # (1, 192) speaker vector
    ref_mel: torch.Tensor  # (1, 400, 80) reference mel that the DiT's ECAPA-TDNN encodes

    @classmethod
    def from_spk_dict(cls, entry: Mapping | Voice, device: torch.device, dtype=torch.float32) -> Voice:
        cond, ref_mel = (entry.cond, entry.ref_mel) if isinstance(entry, Voice) else (entry["cond"], entry["ref_mel"])
        return cls(cond.to(device=device, dtype=dtype), ref_mel.to(device=device, dtype=dtype))

    def condition(self, dit: torch.nn.Module, flow: FlowSettings) -> VoiceCondition:
        return VoiceCondition(dit, self.cond, self.ref_mel, guided=flow.guidance_scale >= MIN_GUIDANCE_SCALE)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _code_tensor(codes: Sequence[int] | torch.Tensor, dit: torch.nn.Module) -> torch.Tensor:
    codes = torch.as_tensor(codes, dtype=torch.long, device=_device(dit)).reshape(1, -1)
    num_embeds = dit.config.num_embeds
    if codes.numel() and (codes.min() < 0 or codes.max() >= num_embeds):
        # The talker's vocabulary is larger than the DiT's (EOS, BOS, pad...); those must be filtered out.
        low, high = codes.min().item(), codes.max().item()
        raise ValueError(f"token2wav codes must lie in [0, {num_embeds}); got {low}..{high}")
    return codes


def pass_times(flow: FlowSettings, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """The time each DiT pass of one solve is called at, in order: the integrator walked with a velocity that
    only notes its time, so the values are the very ones a real solve computes."""
    times = []

    def note(time: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        times.append(time)
        return torch.zeros_like(value)

    INTEGRATORS[flow.solver](note, torch.zeros(1, dtype=dtype, device=device), ode_time_points(flow.num_steps, flow.sway, dtype, device))
    return times


@dataclass(frozen=True)
class PreparedVoice:
    """A voice as every window's solve reads it: its DiT conditioning (the ECAPA-TDNN's encoding of its
    reference mel) and each pass's time modulation. Both depend on the voice, the flow settings and the
    weights alone, and neither changes once made."""

    condition: VoiceCondition
    times: TimeModulation

    @classmethod
    def make(cls, dit: torch.nn.Module, voice: Voice, flow: FlowSettings) -> PreparedVoice:
        condition = voice.condition(dit, flow)
        return cls(condition, TimeModulation(dit, condition.halves, pass_times(flow, voice.cond.dtype, voice.cond.device)))


class VoiceCache:
    """The prepared voices of one model, kept for every answer of every session: a voice is prepared at its
    first answer's first window (80 ms of the tiny model's first audio on a CPU), then reused. Answers run
    on many threads; the lock makes each entry once. An entry is kept per torch CPU thread count as well: the
    encoding's floats depend on it (the app's model thread runs with one thread, the tests with two), and
    an answer must read exactly what it would have computed itself."""

    def __init__(self):
        self._lock = threading.Lock()
        self._voices: dict[tuple[str, FlowSettings, int], PreparedVoice] = {}

    def get(self, name: str, dit: torch.nn.Module, voice: Voice, flow: FlowSettings) -> PreparedVoice:
        with self._lock:
            key = (name, flow, torch.get_num_threads())
            if key not in self._voices:
                prepared = PreparedVoice.make(dit, voice, flow)
                if voice.cond.is_cuda:  # made on this thread's stream; answers on other streams read it next
                    torch.cuda.current_stream(voice.cond.device).synchronize()
                self._voices[key] = prepared
            return self._voices[key]


class WindowSolver:
    """Solves one voice's windows: the voice prepared once (`prepare`, called at the first window, off the
    first text's path; by default for this solver alone), each window's shared work once per window
    (model/families/qwen2_5_omni/dit_window.py)."""

    def __init__(
        self,
        dit: torch.nn.Module,
        voice: Voice,
        flow: FlowSettings = FlowSettings(),
        prepare: Callable[[], PreparedVoice] | None = None,
    ):
        self.dit, self.voice, self.flow = dit, voice, flow
        self.prepare = prepare or (lambda: PreparedVoice.make(dit, voice, flow))
        self.prepared: PreparedVoice | None = None

    @torch.no_grad()
    def __call__(self, codes: Sequence[int] | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The DiT's mel for `codes` starting from `noise` (1, frames, 80): (1, 80, frames), as `sample()`
        returns. One fresh solve from t = 0 over exactly these codes; positions and blocks count from the
        first code."""
        dit, flow = self.dit, self.flow
        codes = _code_tensor(codes, dit)
        frames = codes.shape[1] * dit.config.repeats
        if noise.shape[1] != frames:
            raise ValueError(f"noise covers {noise.shape[1]} mel frames, the codes {frames}")
        if frames > dit.config.max_position_embeddings:
            limit = dit.config.max_position_embeddings
            raise ValueError(f"{frames} mel frames exceed the DiT's max_position_embeddings ({limit})")
        noise = noise.to(device=self.voice.ref_mel.device, dtype=self.voice.ref_mel.dtype)
        if self.prepared is None:
            self.prepared = self.prepare()
        velocity = DiTWindow(dit, codes, self.prepared.condition, flow.guidance_scale, self.prepared.times)
        times = ode_time_points(flow.num_steps, flow.sway, self.voice.cond.dtype, codes.device)
        mel = INTEGRATORS[flow.solver](velocity, noise, times)
        return mel.permute(0, 2, 1)


@dataclass(eq=False)
class WindowStep(Step):
    """One chunk's DiT window, asked for by an answer's vocoder stream (StreamingToken2Wav.next_window):
    solved, then vocoded with its left context (`to_vocoder` makes BigVGAN's input from the window's mel,
    `emit` the chunk's samples from BigVGAN's output), alone or with other answers' windows (`solve_windows`)."""

    solver: WindowSolver
    codes: list[int]
    noise: torch.Tensor  # (1, frames, 80)
    vocoder: torch.nn.Module
    to_vocoder: Callable[[torch.Tensor], torch.Tensor]
    emit: Callable[[torch.Tensor], np.ndarray]
    result: np.ndarray | None = None
    ran: bool = False

    def key(self) -> tuple:
        """Windows with equal keys can be solved in one batch (a stream's own mel solver: never batched)."""
        solver = self.solver
        if not isinstance(solver, WindowSolver):
            return (id(self),)
        return id(solver.dit), solver.flow, len(self.codes), solver.voice.cond.dtype

    @classmethod
    def run_together(cls, steps: list[WindowStep]) -> None:
        solve_windows(steps)

    def run(self) -> None:
        solve_windows([self])


@torch.no_grad()
def solve_windows(steps: list[WindowStep]) -> None:
    """Solves the windows, those of equal length, solver and voice settings in one batch (one DiT pass for all
    of them per ODE step), then vocodes them, those of equal length in one BigVGAN call. A window alone is
    solved and vocoded exactly as `WindowSolver` and `vocode` do; in a batch it may differ from that by float
    rounding."""
    groups: dict[tuple, list[WindowStep]] = {}
    for step in steps:
        groups.setdefault(step.key(), []).append(step)
    mels: dict[WindowStep, torch.Tensor] = {}
    for group in groups.values():
        if len(group) == 1:
            mels[group[0]] = group[0].solver(group[0].codes, group[0].noise)
        else:
            mels.update(zip(group, _solve_together(group)))
    inputs: dict[tuple, list[tuple[WindowStep, torch.Tensor]]] = {}
    for step in steps:
        mel = step.to_vocoder(mels.pop(step))
        inputs.setdefault((id(step.vocoder), mel.shape[-1]), []).append((step, mel))
    for group in inputs.values():
        if len(group) == 1:
            waveforms = [vocode(group[0][0].vocoder, group[0][1])]
        else:
            waveforms = vocode_together(group[0][0].vocoder, [mel for _, mel in group])
        for (step, _), waveform in zip(group, waveforms):
            step.result = step.emit(waveform)
            step.ran = True


def _solve_together(group: list[WindowStep]) -> list[torch.Tensor]:
    """The mels (1, 80, frames) of windows of one length, solved as one batch."""
    first = group[0].solver
    dit, flow = first.dit, first.flow
    prepared = []
    for step in group:
        if step.solver.prepared is None:
            step.solver.prepared = step.solver.prepare()
        prepared.append(step.solver.prepared)
    codes = torch.cat([_code_tensor(step.codes, dit) for step in group])
    noise = torch.cat([step.noise.to(device=first.voice.ref_mel.device, dtype=first.voice.ref_mel.dtype)
                       for step in group])
    velocity = DiTWindow(dit, codes, [p.condition for p in prepared], flow.guidance_scale, prepared[0].times)
    times = ode_time_points(flow.num_steps, flow.sway, first.voice.cond.dtype, codes.device)
    mel = INTEGRATORS[flow.solver](velocity, noise, times).permute(0, 2, 1)
    return [mel[row : row + 1] for row in range(len(group))]


def solve_mel(
    dit: torch.nn.Module,
    codes: Sequence[int] | torch.Tensor,
    voice: Voice,
    noise: torch.Tensor,
    flow: FlowSettings = FlowSettings(),
) -> torch.Tensor:
    """One window's solve (`WindowSolver`), for a caller with a single window."""
    return WindowSolver(dit, voice, flow)(codes, noise)


def samples_per_mel_frame(vocoder: torch.nn.Module) -> int:
    return math.prod(vocoder.config.upsample_rates)  # 240: 24 kHz from 100 mel frames/s


@torch.no_grad()
def vocode(vocoder: torch.nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """BigVGAN on a (1, 80, frames) mel: a 1-D float waveform on the CPU, frames x 240 samples."""
    waveform = vocoder(mel).reshape(-1)
    expected = mel.shape[-1] * samples_per_mel_frame(vocoder)
    if waveform.numel() != expected:  # the trims below count on exactly 240 samples per frame
        got = waveform.numel()
        raise RuntimeError(f"BigVGAN returned {got} samples for {mel.shape[-1]} mel frames, not {expected}")
    return waveform


@torch.no_grad()
def vocode_together(vocoder: torch.nn.Module, mels: list[torch.Tensor]) -> list[torch.Tensor]:
    """BigVGAN on several (1, 80, frames) mels of one length, in one call: their waveforms, as `vocode`'s."""
    waveforms = vocoder(torch.cat(mels))
    expected = (len(mels), mels[0].shape[-1] * samples_per_mel_frame(vocoder))
    if tuple(waveforms.shape) != expected:
        raise RuntimeError(f"BigVGAN returned {tuple(waveforms.shape)} for {len(mels)} mels, not {expected}")
    return list(waveforms)


def make_noise(
    noise: torch.Tensor | int | None, frames: int, mel_bins: int = C.MEL_BINS_OUT, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The starting noise for a whole answer, (1, frames, 80): given, drawn from a seed, or from torch's RNG.
    Drawn on `device` as transformers draws it there (after `torch.manual_seed(seed)`), so a seed gives
    its noise on any device."""
    if isinstance(noise, torch.Tensor):
        if noise.ndim != 3 or noise.shape[0] != 1 or noise.shape[2] != mel_bins:
            raise ValueError(f"noise must be (1, frames, {mel_bins}), got {tuple(noise.shape)}")
        return noise
    generator = None if noise is None else torch.Generator(device=device).manual_seed(int(noise))
    return torch.randn((1, frames, mel_bins), generator=generator, device=device)


def decode_whole(
    token2wav: torch.nn.Module,
    codes: Sequence[int] | torch.Tensor,
    voice: Mapping | Voice,
    noise: torch.Tensor | int | None = None,
    *,
    solver: str = "rk4",
    num_steps: int = ODE_TIME_POINTS,
    guidance_scale: float = GUIDANCE_SCALE,
    sway: float | None = SWAY_COEFFICIENT,
) -> np.ndarray:
    """The whole answer in one solve and one vocoder call: float32 24 kHz samples.

    With the default settings and `noise` = the `torch.randn([1, 2 * len(codes), 80])` that transformers
    draws inside `sample()`, this is `token2wav(codes, conditioning=cond, reference_mel=ref_mel)`. A longer
    noise tensor is used from frame 0."""
    dit, vocoder = token2wav.code2wav_dit_model, token2wav.code2wav_bigvgan_model
    voice = Voice.from_spk_dict(voice, _device(dit))
    frames = len(codes) * dit.config.repeats
    noise = make_noise(noise, frames, dit.config.mel_dim, _device(dit))[:, :frames]
    flow = FlowSettings(solver, num_steps, guidance_scale, sway)
    mel = solve_mel(dit, codes, voice, noise, flow)
    return vocode(vocoder, mel).numpy().astype(np.float32, copy=False)
