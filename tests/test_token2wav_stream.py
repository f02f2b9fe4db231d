"""Chunked token2wav (model/families/qwen2_5_omni/vocoder.py) against transformers' whole-answer token2wav.

Two kinds of model: the tiny random-weight checkpoint (exactness against transformers, causality), and a
stand-in whose DiT returns zero velocity (so a window's mel is its starting noise) and whose vocoder writes
each mel frame's absolute index into its samples: with it, the streamed audio must read 0, 1, 2, ... sample
by sample, which pins down windows, noise slicing and vocoder trims without any model noise.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.families.qwen2_5_omni.token2wav import (
    FlowSettings,
    PreparedVoice,
    Voice,
    VoiceCache,
    decode_whole,
    integrate_rk4,
    ode_time_points,
    solve_mel,
    vocode,
)
from model.families.qwen2_5_omni.vocoder import StreamingToken2Wav

BLOCK = 24  # DiT block, mel frames
PAST = 2 * BLOCK  # window context before a chunk
AHEAD = BLOCK  # window context after a chunk
VOCODER_CONTEXT = 40  # mel frames vocoded in front of a later chunk
VOCODER_TRIM = 20  # mel frames' samples dropped at each inner edge
SAMPLES_PER_FRAME = 240
FAST = {"solver": "euler", "num_steps": 2}  # one DiT pass per window: the schedule, not the solver, is tested


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On this shared 2-core machine two OpenMP threads contend with other processes and run the tiny model
    # 10-30x slower than one; one thread also makes every float result reproducible run to run.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def token2wav(loaded):
    return loaded.model.token2wav


@pytest.fixture(scope="module")
def voice(loaded):
    return loaded.voices["Chelsie"]


def random_codes(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 8193, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def expected_chunks(
    n_codes: int, first: int = 48, chunk: int = 48, largest: int | None = None
) -> list[tuple[int, int, int, int, bool]]:
    """(window start, window end, chunk start, chunk end, last) in mel frames, from streaming.md's rule; chunks
    after the second double until `largest`."""
    total = 2 * n_codes
    chunks, start, size, next_size = [], 0, first, chunk
    while start + size + AHEAD <= total:
        chunks.append((max(0, start - PAST), start + size + AHEAD, start, start + size, False))
        start, size, next_size = start + size, next_size, min(2 * next_size, largest or chunk)
    chunks.append((max(0, start - PAST), total, start, total, True))
    return chunks


def stream_all(stream: StreamingToken2Wav, codes: list[int], step: int = 1) -> tuple[list[np.ndarray], list[int]]:
    """Feed `step` codes at a time, then flush; returns the chunks and the code count at each chunk's emission."""
    chunks, fired_at = [], []
    for i in range(0, len(codes), step):
        new = stream.feed(codes[i : i + step])
        chunks += new
        fired_at += [min(i + step, len(codes))] * len(new)
    chunks += stream.flush()
    return chunks, fired_at


# --- the zero-velocity stand-in ---------------------------------------------------------------------------


class StandInDiT(torch.nn.Module):
    """The DiT's shape only: the stand-in solver below does its work."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(
            block_size=BLOCK,
            look_backward_layers=[0, 20],
            look_ahead_layers=[10],
            repeats=2,
            num_embeds=8193,
            mel_dim=80,
            max_position_embeddings=32768,
        )
        self.device_anchor = torch.nn.Parameter(torch.zeros(1))


class ZeroVelocitySolver:
    """A window solve whose velocity is zero: the mel is the window's starting noise."""

    def __init__(self):
        self.windows: list[tuple[int, int]] = []  # (first, end) mel frame of each window, read from its codes

    def __call__(self, codes, noise):
        codes = [int(code) for code in codes]  # the tests feed code k = k, so codes say where the window is
        assert codes == list(range(codes[0], codes[0] + len(codes)))
        self.windows.append((2 * codes[0], 2 * (codes[-1] + 1)))
        return noise.permute(0, 2, 1)


class FrameIndexVocoder(torch.nn.Module):
    config = SimpleNamespace(upsample_rates=[SAMPLES_PER_FRAME])

    def forward(self, mel):
        frame = mel[0, 0].round().long()  # bin 0 of the stand-in's mel is the absolute frame index
        return (frame[:, None] * SAMPLES_PER_FRAME + torch.arange(SAMPLES_PER_FRAME)).reshape(-1).float()


class StandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.code2wav_dit_model = StandInDiT()
        self.code2wav_bigvgan_model = FrameIndexVocoder()


STAND_IN_VOICE = {"cond": torch.zeros(1, 192), "ref_mel": torch.zeros(1, 400, 80)}


def frame_index_noise(frames: int) -> torch.Tensor:
    return torch.arange(frames, dtype=torch.float32)[None, :, None].repeat(1, 1, 80)


# --- 1. one chunk is exactly transformers' token2wav ------------------------------------------------------


def capture_vocoder_input(token2wav):
    mels = []
    hook = token2wav.code2wav_bigvgan_model.register_forward_pre_hook(lambda module, args: mels.append(args[0].clone()))
    return mels, hook


@pytest.mark.parametrize(
    "settings",
    [
        {},  # transformers' defaults: RK4, 10 time points, guidance 0.5, sway -1
        {"num_steps": 4, "guidance_scale": 0.0, "sway_coefficient": None},  # the unguided branch, no sway
    ],
    ids=["defaults", "unguided-no-sway"],
)
def test_one_chunk_equals_transformers(token2wav, voice, settings):
    codes = random_codes(30, seed=1)  # 60 mel frames: fewer than the first chunk's 48 + 24 look-ahead
    seed = 1234
    mels, hook = capture_vocoder_input(token2wav)
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            expected = token2wav(
                torch.tensor([codes]), conditioning=voice["cond"], reference_mel=voice["ref_mel"], **settings
            )
        torch.manual_seed(seed)
        noise = torch.randn([1, 2 * len(codes), 80])  # what transformers' sample() drew

        ours = dict(settings)
        if "sway_coefficient" in ours:
            ours["sway"] = ours.pop("sway_coefficient")
        whole = decode_whole(token2wav, codes, voice, noise, **ours)
        stream = StreamingToken2Wav(token2wav, voice, noise=noise, **ours)
        assert stream.feed(codes) == []  # not enough codes for the first chunk's look-ahead
        streamed = stream.flush()
    finally:
        hook.remove()

    expected = expected.numpy()
    assert whole.dtype == np.float32 and whole.shape == (60 * SAMPLES_PER_FRAME,)
    # Same modules, same inputs, same operations in the same order, one thread: bit for bit.
    np.testing.assert_array_equal(whole, expected)
    assert len(streamed) == 1
    np.testing.assert_array_equal(streamed[0], expected)
    reference_mel, whole_mel, streamed_mel = mels
    assert torch.equal(whole_mel, reference_mel) and torch.equal(streamed_mel, reference_mel)


def test_rk4_step_is_transformers_solver():
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

    def velocity(t, x):
        return torch.sin(3 * x) * t - 0.5 * x

    start = torch.randn(1, 30, 80, generator=torch.Generator().manual_seed(3))
    times = torch.linspace(0, 1, 10)
    times += -1.0 * (torch.cos(torch.pi / 2 * times) - 1 + times)  # sample()'s sway warp, in place
    assert torch.equal(ode_time_points(10, -1.0, torch.float32, torch.device("cpu")), times)
    expected = RungeKutta4ODESolver(velocity, start).integrate(times)[-1]
    assert torch.equal(integrate_rk4(velocity, start, times), expected)


def count_preparations(monkeypatch, delay: float = 0.0) -> list:
    """Patches PreparedVoice.make to note each call (after `delay` seconds, to widen a race)."""
    made, real = [], PreparedVoice.make

    def make(cls, *args):
        made.append(args)
        time.sleep(delay)
        return real(*args)

    monkeypatch.setattr(PreparedVoice, "make", classmethod(make))
    return made


def test_a_prepared_voice_serves_every_answer_and_changes_no_sample(token2wav, voice, monkeypatch):
    codes = random_codes(60, seed=4)  # chunks of 24, 48, then the rest: three windows, 36 RK4 passes each
    sizes = {"first_chunk_frames": 24, "chunk_frames": 48}
    alone, _ = stream_all(StreamingToken2Wav(token2wav, voice, noise=5, **sizes), codes, step=3)
    made = count_preparations(monkeypatch)
    cache = VoiceCache()
    for answer in range(2):
        stream = StreamingToken2Wav(token2wav, voice, noise=5, voice_cache=(cache, "Chelsie"), **sizes)
        chunks, _ = stream_all(stream, codes, step=3)
        assert len(chunks) == len(alone) == 3
        for ours, theirs in zip(chunks, alone):
            np.testing.assert_array_equal(ours, theirs)
    assert len(made) == 1  # the second answer's windows read the first answer's preparation


def test_a_voice_prepared_with_other_torch_threads_is_prepared_again(token2wav, voice):
    """The encoding's floats depend on torch's CPU threads: an answer must not read one made with others."""
    codes, cache = random_codes(30, seed=6), VoiceCache()
    stream_all(StreamingToken2Wav(token2wav, voice, noise=5, voice_cache=(cache, "Chelsie"), **FAST), codes)
    torch.set_num_threads(2)
    try:
        alone, _ = stream_all(StreamingToken2Wav(token2wav, voice, noise=5, **FAST), codes)
        cached, _ = stream_all(StreamingToken2Wav(token2wav, voice, noise=5, voice_cache=(cache, "Chelsie"), **FAST), codes)
    finally:
        torch.set_num_threads(1)
    np.testing.assert_array_equal(np.concatenate(cached), np.concatenate(alone))


def test_the_voice_cache_prepares_each_voice_once_across_threads(token2wav, voice, monkeypatch):
    made = count_preparations(monkeypatch, delay=0.05)
    cache, dit = VoiceCache(), token2wav.code2wav_dit_model
    the_voice, flow = Voice.from_spk_dict(voice, torch.device("cpu")), FlowSettings(**FAST)
    barrier, got = threading.Barrier(6), []

    def answer():
        barrier.wait()
        got.append(cache.get("Chelsie", dit, the_voice, flow))

    threads = [threading.Thread(target=answer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 6 and all(entry is got[0] for entry in got)
    assert len(made) == 1
    assert len(got[0].times.passes) == 1  # Euler over 2 time points: one DiT pass
    rk4 = cache.get("Chelsie", dit, the_voice, FlowSettings())  # other flow settings: another entry
    assert rk4 is not got[0] and len(rk4.times.passes) == 36 and len(made) == 2


# --- 2. causality: a chunk depends on nothing after its look-ahead block ----------------------------------

N_STREAMED = 100  # chunks [0,48) [48,96) [96,144) fire at 36, 60, 84 codes; [144,200) on flush


@pytest.fixture(scope="module")
def streamed(token2wav, voice):
    codes = random_codes(N_STREAMED, seed=2)
    stream = StreamingToken2Wav(token2wav, voice, noise=7, **FAST)
    chunks, fired_at = stream_all(stream, codes)
    return SimpleNamespace(codes=codes, chunks=chunks, fired_at=fired_at, stream=stream)


def test_chunks_fire_when_their_lookahead_exists(streamed):
    assert streamed.fired_at == [36, 60, 84]
    assert len(streamed.chunks) == 4


def test_chunk_does_not_depend_on_later_codes(token2wav, voice, streamed):
    at_once_stream = StreamingToken2Wav(token2wav, voice, noise=7, **FAST)
    all_at_once, _ = stream_all(at_once_stream, streamed.codes, step=len(streamed.codes))
    assert len(all_at_once) == len(streamed.chunks)
    for incremental, at_once in zip(streamed.chunks, all_at_once):
        np.testing.assert_array_equal(incremental, at_once)

    # Chunk 1 ends at mel frame 96; its look-ahead block ends at 120 = code 60. Change every code after that.
    changed = streamed.codes[:60] + random_codes(N_STREAMED - 60, seed=99)
    other, _ = stream_all(StreamingToken2Wav(token2wav, voice, noise=7, **FAST), changed, step=7)
    for k in (0, 1):
        np.testing.assert_array_equal(other[k], streamed.chunks[k])
    assert not np.array_equal(other[2], streamed.chunks[2])  # the changed codes do reach chunk 2


def test_stream_is_windowed_solves_and_trimmed_vocoding(token2wav, voice, streamed):
    """The streamed audio rebuilt from a test-side description: each chunk's mel from a fresh solve of its
    window (noise sliced by absolute frame), then BigVGAN with 40 frames of left context, 20 trimmed."""
    codes, noise = streamed.codes, streamed.stream.noise
    dit, vocoder = token2wav.code2wav_dit_model, token2wav.code2wav_bigvgan_model
    flow = FlowSettings(**FAST)
    the_voice = Voice.from_spk_dict(voice, torch.device("cpu"))
    total = 2 * len(codes)
    mel = torch.full((1, 80, total), float("nan"))
    for window_start, window_end, start, end, _ in expected_chunks(len(codes)):
        window_codes = codes[window_start // 2 : window_end // 2]
        window = solve_mel(dit, window_codes, the_voice, noise[:, window_start:window_end], flow)
        mel[:, :, start:end] = window[:, :, start - window_start : end - window_start]
    assert not mel.isnan().any()

    pieces, emitted = [], 0
    for _, _, start, end, last in expected_chunks(len(codes)):
        vocoder_start = max(0, start - VOCODER_CONTEXT)
        waveform = vocode(vocoder, mel[:, :, vocoder_start:end].contiguous()).numpy()
        stop = end if last else end - VOCODER_TRIM
        lo, hi = (emitted - vocoder_start) * SAMPLES_PER_FRAME, (stop - vocoder_start) * SAMPLES_PER_FRAME
        pieces.append(waveform[lo:hi])
        emitted = stop
    assert emitted == total
    assert [len(p) for p in streamed.chunks] == [len(p) for p in pieces]
    np.testing.assert_array_equal(np.concatenate(streamed.chunks), np.concatenate(pieces))


# --- 3. length and continuity ------------------------------------------------------------------------------

CODE_COUNTS = [10, 36, 37, 60, 100, 150, 400]


@pytest.mark.parametrize("first, chunk, largest", [(48, 48, None), (24, 72, None), (96, 48, None), (24, 48, 192)])
@pytest.mark.parametrize("step", [1, 5, 1000])
def test_every_sample_once_in_order(first, chunk, largest, step):
    for n in CODE_COUNTS:
        solver = ZeroVelocitySolver()
        stream = StreamingToken2Wav(
            StandIn(),
            STAND_IN_VOICE,
            mel_solver=solver,
            first_chunk_frames=first,
            chunk_frames=chunk,
            max_chunk_frames=largest,
            noise=frame_index_noise(2 * n),
            **FAST,
        )
        chunks, _ = stream_all(stream, list(range(n)), step)
        audio = np.concatenate(chunks)
        np.testing.assert_array_equal(audio, np.arange(2 * n * SAMPLES_PER_FRAME, dtype=np.float32))
        expected = expected_chunks(n, first, chunk, largest)
        assert solver.windows == [(ws, we) for ws, we, *_ in expected]
        assert all(ws % BLOCK == 0 for ws, *_ in expected)
        # Where each chunk's audio starts: 20 frames before its own first frame (the first one at 0).
        starts = np.cumsum([0] + [len(c) for c in chunks[:-1]])
        assert list(starts) == [max(0, s - VOCODER_TRIM) * SAMPLES_PER_FRAME for _, _, s, *_ in expected]


def test_reference_length_on_the_tiny_model(token2wav, voice):
    stream = StreamingToken2Wav(token2wav, voice, noise=3, **FAST)
    for n in CODE_COUNTS:
        stream.reset()
        chunks, _ = stream_all(stream, random_codes(n, seed=n), step=n)
        assert len(chunks) == len(expected_chunks(n))
        audio = np.concatenate(chunks)
        assert audio.dtype == np.float32 and audio.shape == (2 * n * SAMPLES_PER_FRAME,)
        assert np.isfinite(audio).all()


# --- 4. settings ---------------------------------------------------------------------------------------------


def test_euler_and_rk4_differ(token2wav, voice):
    codes = random_codes(10, seed=4)
    rk4 = decode_whole(token2wav, codes, voice, 5, solver="rk4", num_steps=3)
    euler = decode_whole(token2wav, codes, voice, 5, solver="euler", num_steps=3)
    assert np.isfinite(rk4).all() and np.isfinite(euler).all()
    assert np.abs(rk4 - euler).max() > 1e-3
    streamed = StreamingToken2Wav(token2wav, voice, noise=5, solver="euler", num_steps=3)
    streamed.feed(codes)
    np.testing.assert_array_equal(np.concatenate(streamed.flush()), euler)
    with pytest.raises(ValueError):
        StreamingToken2Wav(token2wav, voice, solver="midpoint")


@pytest.mark.parametrize(
    "first, chunk, largest, fired",
    [
        (48, 48, None, [36, 60, 84, 108, 132]),  # 2n - 24 a positive multiple of 48
        (24, 72, None, [24, 60, 96, 132]),  # the first chunk's end 24, then every 72 frames
        (96, 48, None, [60, 84, 108, 132]),
        (24, 48, 192, [24, 48, 96]),  # chunks of 24, 48, 96 frames; the next (192) would need 192 codes
    ],
)
def test_chunk_sizes_set_when_chunks_fire(first, chunk, largest, fired):
    stream = StreamingToken2Wav(
        StandIn(),
        STAND_IN_VOICE,
        first_chunk_frames=first,
        chunk_frames=chunk,
        max_chunk_frames=largest,
        noise=0,
        mel_solver=ZeroVelocitySolver(),
        **FAST,
    )
    _, fired_at = stream_all(stream, list(range(150)))
    assert fired_at == fired


def test_api_guards():
    stream = StreamingToken2Wav(StandIn(), STAND_IN_VOICE, mel_solver=ZeroVelocitySolver(), noise=frame_index_noise(200), **FAST)
    with pytest.raises(ValueError):
        stream.feed([8193])  # a talker control code: the DiT cannot embed it
    with pytest.raises(ValueError):
        StreamingToken2Wav(StandIn(), STAND_IN_VOICE, mel_solver=ZeroVelocitySolver(), chunk_frames=40)  # not a whole number of blocks
    with pytest.raises(ValueError):
        stream.feed(list(range(101)))  # more than the noise covers
    assert stream.flush() == []  # nothing was fed
    with pytest.raises(RuntimeError):
        stream.feed([0])
    stream.reset()
    first = stream_all(stream, list(range(50)))[0]
    stream.reset()
    np.testing.assert_array_equal(np.concatenate(stream_all(stream, list(range(50)))[0]), np.concatenate(first))
