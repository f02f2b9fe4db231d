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
decode (`decode_whole`). One window's solve and vocoding are in token2wav.py; this file is the schedule of
chunks and the streaming decoder over it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from model import constants as C
from model.families.qwen2_5_omni.token2wav import (
    GUIDANCE_SCALE,
    ODE_TIME_POINTS,
    SWAY_COEFFICIENT,
    FlowSettings,
    Voice,
    VoiceCache,
    WindowSolver,
    WindowStep,
    _code_tensor,
    _device,
    make_noise,
    samples_per_mel_frame,
    vocode,
)

DEFAULT_CHUNK_MEL_FRAMES = 48  # 24 codes, 480 ms: the Qwen fork's chunk
# BigVGAN edges: each chunk is vocoded with this much already-emitted mel in front of it, and this many mel
# frames' samples are dropped at each end of what it returns (200 ms of real context on each side).
VOCODER_CONTEXT_MEL_FRAMES = 40
VOCODER_TRIM_MEL_FRAMES = 20


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
        self.add(codes)
        return self._decode_ready()

    def flush(self) -> list[np.ndarray]:
        """The talker has finished: decode the rest of the answer (all of it in one window if it fits one chunk)."""
        if self.state.finished:
            return []
        self.end()
        return self._decode_ready()

    # What `feed` and `flush` do in two halves, for a caller that solves the windows of several answers
    # together (model/engine/speech_worker.py): `add` / `end`, then `next_window` until it gives None.
    batches_windows = True

    def add(self, codes: Sequence[int]) -> None:
        if self.state.finished:
            raise RuntimeError("this answer was flushed; call reset() before feeding a new one")
        codes = [int(code) for code in codes]
        _code_tensor(codes, self.dit)  # reject codes the DiT cannot embed before they are stored
        if len(self.state.codes) + len(codes) > self.max_codes:
            raise ValueError(f"the answer exceeds the {self.max_codes} codes that the noise covers; raise max_frames")
        self.state.codes.extend(codes)

    def end(self) -> None:
        self.state.finished = True

    def next_window(self) -> WindowStep | None:
        """The next chunk's DiT window, if it can be decoded now; its result is the chunk's audio. Nothing
        changes until it has run, and the next window is asked for only then."""
        plan = self._next_plan()
        if plan is None:
            return None
        codes, noise = self._window_inputs(plan)
        return WindowStep(self.solve, codes, noise, self.vocoder, partial(self._vocoder_input, plan),
                          partial(self._emit, plan))

    def _next_plan(self) -> ChunkPlan | None:
        if self.state.decoded and self.state.decoded[-1].is_last:
            return None
        known_frames = len(self.state.codes) * self.mel_frames_per_code
        return self.schedule.plan(self.state.next_chunk, known_frames, self.state.finished)

    def _decode_ready(self) -> list[np.ndarray]:
        chunks = []
        while (plan := self._next_plan()) is not None:
            chunks.append(self._decode(plan))
        return chunks

    def _decode(self, plan: ChunkPlan) -> np.ndarray:
        return self._finish_chunk(plan, self.solve(*self._window_inputs(plan)))

    def _window_inputs(self, plan: ChunkPlan) -> tuple[list[int], torch.Tensor]:
        per_code = self.mel_frames_per_code
        window_codes = self.state.codes[plan.window_start // per_code : plan.window_end // per_code]
        if self.noise is None:
            self.noise = self._draw_noise(plan)
        return window_codes, self.noise[:, plan.window_start : plan.window_end]

    def _finish_chunk(self, plan: ChunkPlan, window_mel: torch.Tensor) -> np.ndarray:
        """The chunk's audio from its window's mel: BigVGAN over it with its left context."""
        return self._emit(plan, vocode(self.vocoder, self._vocoder_input(plan, window_mel)))

    def _vocoder_input(self, plan: ChunkPlan, window_mel: torch.Tensor) -> torch.Tensor:
        """The chunk's mel with its left context, for BigVGAN; the chunk counts as decoded from here."""
        self.state.next_chunk += 1
        self.state.decoded.append(plan)
        chunk_mel = window_mel[:, :, plan.start - plan.window_start : plan.end - plan.window_start]
        context_frames = plan.start - plan.vocoder_start
        tail = self.state.mel_tail
        context = tail[:, :, tail.shape[-1] - context_frames :] if context_frames else chunk_mel[:, :, :0]
        vocoder_mel = torch.cat([context, chunk_mel], dim=-1)
        self.state.mel_tail = vocoder_mel[:, :, -self.schedule.vocoder_context_frames :]
        return vocoder_mel

    def _emit(self, plan: ChunkPlan, waveform: torch.Tensor) -> np.ndarray:
        """The chunk's own samples of BigVGAN's output (its edges are the neighbours')."""
        first = (plan.emit_start - plan.vocoder_start) * self.samples_per_mel_frame
        last = (plan.emit_end - plan.vocoder_start) * self.samples_per_mel_frame
        return waveform[first:last].numpy().astype(np.float32, copy=False)
