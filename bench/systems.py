"""The three systems measured, each answering the same user turn with answers of the same forced length.

* `reference`: transformers' `generate(return_audio=True)` (model/families/qwen2_5_omni/reference.py): thinker to the end, then
  the talker, then token2wav over the whole answer; text and audio come back when it returns.
* `engine_whole`: our engine (model/engine/session.py) given the whole recording at once (`add_user_turn`).
* `engine_live`: our engine fed the recording in real time (0.1 s of audio every 0.1 s, video frames at
  their timestamps), so the 2 s windows are encoded and prefilled while the user speaks; the input ends
  with `end_user_turn`.

Every time is in seconds from the end of the user's input: for the live system the moment the last audio
arrived in real time (so a prefill that falls behind the speech counts), else the call that hands over the
recording.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from bench.memory import PeakMemory
from bench.stages import Span, StageRecorder
from model import constants as C
from model.engine.sampling import Sampling
from model.families.qwen2_5_omni.token2wav import ODE_TIME_POINTS
from model.inputs.conversation import Audio, Conversation, Part, Video
from model.session import AnswerDone, AnswerSettings, AudioChunk, OmniSession

SYSTEMS = ("reference", "engine_whole", "engine_live")
LIVE_CHUNK_SAMPLES = 1600  # 0.1 s, like a browser's microphone chunks


@dataclass
class Scenario:
    parts: list[Part]  # the user's turn: a spoken question (Audio) or a video with its sound (Video)
    input_seconds: float
    tokens: int = 120  # thinker tokens, forced: EOS suppressed until then, and no more
    codes: int = 600  # talker codes (12 s of speech at 50 codes/s; Qwen3-Omni: frames, 12.5/s), forced the same way
    voice: str = "Chelsie"
    solver: str = "rk4"
    num_steps: int = ODE_TIME_POINTS
    first_chunk_frames: int = AnswerSettings.first_chunk_frames  # the engine's defaults
    chunk_frames: int = AnswerSettings.chunk_frames
    max_chunk_frames: int = AnswerSettings.max_chunk_frames
    speech_thread: bool | None = None  # token2wav on its own thread (None: the engine's choice)
    decode: str = "auto"  # the engine's KV caches and decode steps (OmniSession's `decode`)
    stage_sync: bool | None = None  # stage hooks synchronise the GPU (None: on CUDA); off keeps every overlap
    seed: int = 0  # fixes token2wav's noise; decoding is greedy, so the runs repeat exactly
    codes_per_second: float = C.CODES_PER_SECOND  # Qwen3-Omni's talker: 12.5 frames a second

    def describe(self) -> dict:
        kinds = [type(p).__name__.lower() for p in self.parts]
        return {
            "input": kinds,
            "input_seconds": round(self.input_seconds, 3),
            "tokens": self.tokens,
            "codes": self.codes,
            "speech_seconds": self.codes / self.codes_per_second,
            "voice": self.voice,
            "engine_solver": self.solver,
            "engine_ode_time_points": self.num_steps,
            "engine_first_chunk_frames": self.first_chunk_frames,
            "engine_chunk_frames": self.chunk_frames,
            "engine_max_chunk_frames": self.max_chunk_frames,
            "engine_speech_thread": self.speech_thread,
            "engine_decode": self.decode,
            "stage_sync": self.stage_sync,
            "decoding": "greedy thinker, greedy talker with its repetition penalty",
        }

    def engine_settings(self) -> AnswerSettings:
        return AnswerSettings(
            voice=self.voice,
            max_new_tokens=self.tokens,
            min_new_tokens=self.tokens,
            talker_max_new_tokens=self.codes,
            talker_min_new_tokens=self.codes,
            talker=Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
            seed=self.seed,
            noise_seed=self.seed,
            first_chunk_frames=self.first_chunk_frames,
            chunk_frames=self.chunk_frames,
            max_chunk_frames=self.max_chunk_frames,
            speech_thread=self.speech_thread,
            solver=self.solver,
            num_steps=self.num_steps,
        )


@dataclass
class TurnRecord:
    """One measured answer. Times are seconds from the end of input (`zero`, absolute perf_counter)."""

    system: str
    zero: float
    first_text: float | None = None
    first_audio: float | None = None
    total: float = 0.0
    tokens: int = 0
    codes: int = 0
    audio_seconds: float = 0.0
    first_chunk_seconds: float = 0.0
    chunks: int = 0
    peak_memory_mib: float = 0.0
    input_start: float | None = None  # live input: when the speech began (negative)
    spans: list[Span] = field(default_factory=list)


def run_reference(loaded, scenario: Scenario, recorder: StageRecorder) -> TurnRecord:
    conversation = Conversation(loaded.family.system_prompt)  # the engine's default prompt
    conversation.add_user(*scenario.parts)
    # The first token exists once the thinker's prefill has its logits: the first call of the LM head (what a
    # streamer on the thinker would show at the earliest; generate itself hands text and audio over only when
    # it returns). Its logits processors and argmax are not counted, so the figure flatters transformers.
    heads = []
    hook = loaded.model.thinker.lm_head.register_forward_hook(lambda *_: heads.append(recorder.now()))
    zero = time.perf_counter()
    try:
        result = loaded.family.forced_reference(
            loaded, conversation, voice=scenario.voice, tokens=scenario.tokens, codes=scenario.codes, seed=scenario.seed
        )
    finally:
        hook.remove()
    end = time.perf_counter()
    record = TurnRecord("reference", zero, total=end - zero)
    record.tokens, record.codes = len(result.thinker_tokens), len(result.talker_codes)
    record.first_text = heads[0] - zero
    record.first_audio = record.total
    record.audio_seconds = record.first_chunk_seconds = result.audio_seconds
    record.chunks = 1
    return record


def _consume(session: OmniSession, scenario: Scenario, record: TurnRecord, offset: float) -> TurnRecord:
    """Reads the answer as a player would; `offset`: seconds from the end of input to the call that ended it."""
    done = None
    for event in session.respond(scenario.engine_settings()):
        if isinstance(event, AudioChunk):
            if record.first_audio is None:
                record.first_audio = time.perf_counter() - record.zero
                record.first_chunk_seconds = len(event.samples) / event.sample_rate
            record.chunks += 1
            record.audio_seconds += len(event.samples) / event.sample_rate
        elif isinstance(event, AnswerDone):
            done = event
    record.total = time.perf_counter() - record.zero
    record.tokens, record.codes = len(done.tokens), len(done.codes)
    # The session times its first token from the call that ended the input.
    record.first_text = offset + done.timings.first_text
    return record


def run_engine_whole(loaded, scenario: Scenario, recorder: StageRecorder) -> TurnRecord:
    session = OmniSession(loaded, decode=scenario.decode)
    zero = time.perf_counter()
    session.add_user_turn(*scenario.parts)
    return _consume(session, scenario, TurnRecord("engine_whole", zero), 0.0)


def live_arrivals(parts: list[Part]) -> list[tuple[float, str, object]]:
    """(seconds after the start of speech when it has arrived, kind, payload) for each audio chunk and video
    frame, in arrival order: a chunk when its last sample has been recorded, a frame at its timestamp."""
    audio = [p.samples for p in parts if isinstance(p, Audio)]
    videos = [p.clip for p in parts if isinstance(p, Video)]
    clip = videos[0] if videos else None
    if clip is not None and clip.audio is not None:
        audio.append(clip.audio)
    sound = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    arrivals = []
    for start in range(0, len(sound), LIVE_CHUNK_SAMPLES):
        chunk = sound[start : start + LIVE_CHUNK_SAMPLES]
        arrivals.append(((start + len(chunk)) / C.INPUT_SAMPLE_RATE, "audio", chunk))
    if clip is not None:
        arrivals += [(float(t), "frame", (frame, float(t))) for frame, t in zip(clip.frames, clip.timestamps)]
    return sorted(arrivals, key=lambda item: (item[0], item[1] == "audio"))  # a frame before audio of its time


def run_engine_live(loaded, scenario: Scenario, recorder: StageRecorder) -> TurnRecord:
    session = OmniSession(loaded, decode=scenario.decode)
    arrivals = live_arrivals(scenario.parts)
    began = time.perf_counter()
    for arrival, kind, payload in arrivals:
        delay = began + arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if kind == "audio":
            session.feed_audio(payload)
        else:
            session.feed_frame(*payload)
    zero = began + arrivals[-1][0]  # the end of speech, whether or not the engine kept up with it
    called = time.perf_counter()
    session.end_user_turn()
    record = TurnRecord("engine_live", zero, input_start=began - zero)
    return _consume(session, scenario, record, called - zero)


RUNNERS = {"reference": run_reference, "engine_whole": run_engine_whole, "engine_live": run_engine_live}


def measure(system: str, loaded, scenario: Scenario) -> TurnRecord:
    """One answer of `system`, with its stage spans (relative to the end of input) and peak memory."""
    memory = PeakMemory(loaded.device)
    memory.reset()
    with StageRecorder(loaded.model, sync=scenario.stage_sync) as recorder:
        record = RUNNERS[system](loaded, scenario, recorder)
    record.peak_memory_mib = memory.peak_mib()
    record.spans = [Span(s.stage, s.start - record.zero, s.end - record.zero, s.positions) for s in recorder.spans]
    return record
