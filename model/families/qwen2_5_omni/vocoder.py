"""Chunked token2wav: talker codes in, 24 kHz audio out while the talker is still talking.

transformers' `Qwen2_5OmniToken2WavModel` solves the DiT's flow-matching ODE over the whole answer and then
vocodes the whole mel, so the first sample exists only after the last code. Here the same modules run on
sliding windows (the Qwen team's streaming design, see shared/reference/streaming.md):

* Mel frames are cut into chunks (48 frames = 24 codes by default; chunks after the second may double up to a
  maximum, as the engine's answers do: 24, 48, 96, 192, 192, ...). Chunk i is solved on the window
  [start - 2 blocks, end + 1 block], clipped to the frames that exist: the DiT's attention reaches one block
  back in two layers and one block ahead in one, so that window holds a frame's receptive field of one pass.
  Window starts are multiples of the block size, so the DiT's block mask lines up as in a whole-answer decode.
* A chunk is decoded once its look-ahead block exists, or when the talker has finished.
* Every window is a fresh ODE solve from t = 0 whose starting noise is one tensor sliced by absolute mel
  frame, so overlapping windows start from the same values for the same frames.
* BigVGAN re-vocodes 40 mel frames of left context with each chunk and drops 20 frames' samples at each edge,
  where its convolutions lack real context; the dropped right edge is emitted by the next chunk, so every
  sample is emitted exactly once, in order.

A whole answer that fits one chunk goes through the same path as one window, which is exactly transformers'
decode (`decode_whole`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from model import constants as C
from model.families.qwen2_5_omni.dit_window import (
    MIN_GUIDANCE_SCALE,
    DiTWindow,
    TimeModulation,
    VoiceCondition,
)

DEFAULT_CHUNK_MEL_FRAMES = 48  # 24 codes, 480 ms: the Qwen fork's chunk
# BigVGAN edges: each chunk is vocoded with this much already-emitted mel in front of it, and this many mel
# frames' samples are dropped at each end of what it returns (200 ms of real context on each side).
VOCODER_CONTEXT_MEL_FRAMES = 40
VOCODER_TRIM_MEL_FRAMES = 20

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


# ---------------------------------------------------------------------------------------------------------
# The chunk schedule: pure arithmetic on mel frame counts


@dataclass(frozen=True)
class ChunkPlan:
    """What decoding one chunk does, in absolute mel frames (half-open ranges)."""

    index: int
    start: int  # the chunk's own frames
    end: int
    window_start: int  # the DiT window solved for it
    window_end: int
    vocoder_start: int  # BigVGAN runs on [vocoder_start, end)
    emit_start: int  # the frames whose samples it emits
    emit_end: int
    is_last: bool


@dataclass(frozen=True)
class ChunkSchedule:
    """Chunk boundaries and windows. Every size is in mel frames and a multiple of the DiT's block."""

    block_frames: int  # DiT block: 24 mel frames = 12 codes = 240 ms
    past_blocks: int  # blocks of left context in a window: how many layers attend one block back
    lookahead_blocks: int  # blocks of right context: how many layers attend one block ahead
    first_chunk_frames: int = DEFAULT_CHUNK_MEL_FRAMES
    chunk_frames: int = DEFAULT_CHUNK_MEL_FRAMES  # the second chunk; each later one doubles, up to the max
    max_chunk_frames: int | None = None  # None: every later chunk is chunk_frames
    vocoder_context_frames: int = VOCODER_CONTEXT_MEL_FRAMES
    vocoder_trim_frames: int = VOCODER_TRIM_MEL_FRAMES

    def __post_init__(self):
        if self.max_chunk_frames is None:
            object.__setattr__(self, "max_chunk_frames", self.chunk_frames)
        if self.max_chunk_frames < self.chunk_frames:
            raise ValueError(f"max_chunk_frames ({self.max_chunk_frames}) is below chunk_frames ({self.chunk_frames})")
        for name in ("first_chunk_frames", "chunk_frames", "max_chunk_frames"):
            size = getattr(self, name)
            if size <= 0 or size % self.block_frames:
                block = self.block_frames
                raise ValueError(f"{name} must be a positive multiple of the DiT block ({block}), got {size}")
        if not 0 <= self.vocoder_trim_frames <= min(self.vocoder_context_frames, self.first_chunk_frames):
            raise ValueError("the vocoder trim must fit in its left context and in the first chunk")

    @classmethod
    def for_dit(cls, dit_config, **sizes) -> ChunkSchedule:
        return cls(
            block_frames=dit_config.block_size,
            past_blocks=len(dit_config.look_backward_layers),
            lookahead_blocks=len(dit_config.look_ahead_layers),
            **sizes,
        )

    def chunk_size(self, index: int) -> int:
        if index == 0:
            return self.first_chunk_frames
        return min(self.chunk_frames * 2 ** (index - 1), self.max_chunk_frames)

    def chunk_start(self, index: int) -> int:
        return sum(self.chunk_size(i) for i in range(index))

    def plan(self, index: int, known_frames: int, finished: bool) -> ChunkPlan | None:
        """Chunk `index` if it can be decoded with `known_frames` mel frames, else None.

        Before the talker finishes a chunk waits for its whole look-ahead block; after, the rest of the answer
        is the last chunk (so it holds up to chunk_frames + block_frames - 1 frames)."""
        start = self.chunk_start(index)
        end = self.chunk_start(index + 1)
        lookahead = self.lookahead_blocks * self.block_frames
        if end + lookahead <= known_frames:
            is_last = False
        elif finished and start < known_frames:
            end, is_last = known_frames, True
        else:
            return None
        vocoder_start = max(0, start - self.vocoder_context_frames)
        return ChunkPlan(
            index=index,
            start=start,
            end=end,
            window_start=max(0, start - self.past_blocks * self.block_frames),
            window_end=min(known_frames, end + lookahead),
            vocoder_start=vocoder_start,
            # The first chunk has no left edge to hide; a later one starts where the previous one stopped.
            emit_start=0 if index == 0 else max(0, start - self.vocoder_trim_frames),
            emit_end=end if is_last else end - self.vocoder_trim_frames,
            is_last=is_last,
        )


# ---------------------------------------------------------------------------------------------------------
# The streaming decoder


@dataclass
class StreamState:
    """Everything one answer's decode remembers between calls."""

    codes: list[int] = field(default_factory=list)  # every code fed so far
    next_chunk: int = 0
    finished: bool = False  # flush() was called: no more codes for this answer
    mel_tail: torch.Tensor | None = None  # (1, 80, <= vocoder context) last decoded mel frames
    decoded: list[ChunkPlan] = field(default_factory=list)  # the chunks emitted so far, in order


class StreamingToken2Wav:
    """Decodes one answer's talker codes chunk by chunk.

        stream = StreamingToken2Wav(model.token2wav, voices["Chelsie"], noise=0)
        for code in talker_codes: play(stream.feed([code]))
        play(stream.flush())
        stream.reset()  # next answer (same voice, same noise)

    `feed` and `flush` return the audio chunks that became ready (float32, 24 kHz); their concatenation is the
    answer's waveform, mel frames x 240 samples long. `noise` is a (1, frames, 80) tensor, a seed, or None
    for torch's global RNG; it is drawn once and sliced by absolute mel frame in every window. `mel_solver`
    solves one window (codes, noise) -> mel; by default the DiT's (`WindowSolver`). `voice_cache`: the model's
    prepared voices and this voice's name in it, so the voice is prepared once for every answer."""

    def __init__(
        self,
        token2wav: torch.nn.Module,
        voice: Mapping | Voice,
        *,
        first_chunk_frames: int = DEFAULT_CHUNK_MEL_FRAMES,
        chunk_frames: int = DEFAULT_CHUNK_MEL_FRAMES,
        max_chunk_frames: int | None = None,
        solver: str = "rk4",
        num_steps: int = ODE_TIME_POINTS,
        guidance_scale: float = GUIDANCE_SCALE,
        sway: float | None = SWAY_COEFFICIENT,
        noise: torch.Tensor | int | None = None,
        max_frames: int | None = None,
        mel_solver: Callable[[Sequence[int], torch.Tensor], torch.Tensor] | None = None,
        voice_cache: tuple[VoiceCache, str] | None = None,
    ):
        self.dit = token2wav.code2wav_dit_model
        self.vocoder = token2wav.code2wav_bigvgan_model
        self.voice = Voice.from_spk_dict(voice, _device(self.dit))
        self.flow = FlowSettings(solver, num_steps, guidance_scale, sway)
        prepare = None
        if voice_cache is not None:
            cache, name = voice_cache
            prepare = partial(cache.get, name, self.dit, self.voice, self.flow)
        self.solve = mel_solver or WindowSolver(self.dit, self.voice, self.flow, prepare)
        self.schedule = ChunkSchedule.for_dit(
            self.dit.config,
            first_chunk_frames=first_chunk_frames,
            chunk_frames=chunk_frames,
            max_chunk_frames=max_chunk_frames,
        )
        self.mel_frames_per_code = self.dit.config.repeats
        self.samples_per_mel_frame = samples_per_mel_frame(self.vocoder)
        if max_frames is None:
            # Room for the longest answer the talker may give.
            longest = C.TALKER_MAX_NEW_TOKENS * self.mel_frames_per_code
            max_frames = noise.shape[1] if isinstance(noise, torch.Tensor) else longest
        self.max_frames = max_frames
        given = isinstance(noise, torch.Tensor)
        self._seed = None if given else noise  # a seed, or None for torch's RNG
        self._given_noise = make_noise(noise, max_frames, self.dit.config.mel_dim)[:, :max_frames] if given else None
        self.reset()

    @property
    def device(self) -> torch.device:
        return self.voice.cond.device  # the voice lives on the DiT's device

    @property
    def max_codes(self) -> int:
        return self.max_frames // self.mel_frames_per_code

    def reset(self) -> None:
        """Forget the answer; keep the voice, settings and a given noise tensor (a seed draws the same again)."""
        self.state = StreamState()
        self.noise: torch.Tensor | None = self._given_noise  # else drawn at the first window, off the first text's path

    def _draw_noise(self, plan: ChunkPlan) -> torch.Tensor:
        """The answer's noise from the seed (or torch's RNG). A whole answer in one window gets exactly its
        frames' worth, the draw transformers makes (on a GPU a longer draw does not begin with the same
        values); a longer one the longest answer's."""
        frames = plan.window_end if plan.index == 0 and plan.is_last else self.max_frames
        return make_noise(self._seed, frames, self.dit.config.mel_dim, self.voice.cond.device)

    def feed(self, codes: Sequence[int]) -> list[np.ndarray]:
        """Add the talker's next codes; returns the chunks whose look-ahead is now complete."""
        if self.state.finished:
            raise RuntimeError("this answer was flushed; call reset() before feeding a new one")
        codes = [int(code) for code in codes]
        _code_tensor(codes, self.dit)  # reject codes the DiT cannot embed before they are stored
        if len(self.state.codes) + len(codes) > self.max_codes:
            raise ValueError(f"the answer exceeds the {self.max_codes} codes that the noise covers; raise max_frames")
        self.state.codes.extend(codes)
        return self._decode_ready()

    def flush(self) -> list[np.ndarray]:
        """The talker has finished: decode the rest of the answer (all of it in one window if it fits one chunk)."""
        if self.state.finished:
            return []
        self.state.finished = True
        return self._decode_ready()

    def _decode_ready(self) -> list[np.ndarray]:
        known_frames = len(self.state.codes) * self.mel_frames_per_code
        chunks = []
        while (plan := self.schedule.plan(self.state.next_chunk, known_frames, self.state.finished)) is not None:
            chunks.append(self._decode(plan))
            self.state.next_chunk += 1
            self.state.decoded.append(plan)
            if plan.is_last:
                break
        return chunks

    def _decode(self, plan: ChunkPlan) -> np.ndarray:
        per_code = self.mel_frames_per_code
        window_codes = self.state.codes[plan.window_start // per_code : plan.window_end // per_code]
        if self.noise is None:
            self.noise = self._draw_noise(plan)
        window_noise = self.noise[:, plan.window_start : plan.window_end]
        window_mel = self.solve(window_codes, window_noise)
        chunk_mel = window_mel[:, :, plan.start - plan.window_start : plan.end - plan.window_start]

        context_frames = plan.start - plan.vocoder_start
        tail = self.state.mel_tail
        context = tail[:, :, tail.shape[-1] - context_frames :] if context_frames else chunk_mel[:, :, :0]
        vocoder_mel = torch.cat([context, chunk_mel], dim=-1)
        waveform = vocode(self.vocoder, vocoder_mel)
        self.state.mel_tail = vocoder_mel[:, :, -self.schedule.vocoder_context_frames :]

        first = (plan.emit_start - plan.vocoder_start) * self.samples_per_mel_frame
        last = (plan.emit_end - plan.vocoder_start) * self.samples_per_mel_frame
        return waveform[first:last].numpy().astype(np.float32, copy=False)
