"""The latency benchmark (bench/) and what it relies on: forced answer lengths, the random-weight builder.

The benchmark runs once on the tiny checkpoint to prove that it works and reports what it should; nothing
here asserts anything about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_session import greedy_settings, run

from model import constants as C
from model.engine.sampling import Sampling, TokenChooser
from model.families.qwen2_5_omni.reference import TalkerSampling, reference_generate
from model.inputs import cases
from model.session import AnswerSettings, AudioChunk, OmniSession


def test_min_new_tokens_suppresses_eos_until_reached():
    eos = 5
    chooser = TokenChooser(Sampling(), min_new_tokens=3, eos=(eos, 7))
    logits = torch.zeros(1, 10)
    logits[0, eos], logits[0, 7], logits[0, 2] = 3.0, 2.0, 1.0  # EOS first, another EOS second
    history = torch.tensor([[1, 1, 1, 1]])  # a prompt of 4
    chosen = []
    for _ in range(4):
        chosen.append(chooser.choose(logits, history))
        history = torch.cat([history, torch.tensor([[chosen[-1]]])], dim=1)
    assert chosen == [2, 2, 2, eos]


def test_the_length_floor_is_transformers_processor_value_for_value():
    from transformers.generation.logits_process import MinNewTokensLengthLogitsProcessor

    from model.engine.sampling import EndsSuppressed

    scores = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    for length in (4, 6, 7, 9):
        ids = torch.zeros(2, length, dtype=torch.long)
        theirs = MinNewTokensLengthLogitsProcessor(4, 3, [5, 7], device="cpu")(ids, scores.clone())
        torch.testing.assert_close(EndsSuppressed(4, 3, (5, 7), "cpu")(ids, scores.clone()), theirs, rtol=0, atol=0)


def test_forced_lengths_still_equal_transformers(loaded, harness):
    """Past where the tiny talker would stop (it ends its speech with the text), forced lengths make both
    sides go on; greedy, they must still agree token for token and code for code."""
    tokens, codes = 10, 40
    natural = harness.result("audio")  # 24 tokens, unforced: its talker stops with the text
    assert len(natural.talker_codes) < codes
    parts = harness.conversation("audio").turns[0].parts
    reference = reference_generate(
        loaded,
        harness.conversation("audio"),
        max_new_tokens=tokens,
        thinker_min_new_tokens=tokens,
        talker_max_new_tokens=codes,
        talker_min_new_tokens=codes,
        talker=TalkerSampling(greedy=True),
        noise_seed=harness.noise_seed,
    )
    session = OmniSession(loaded)
    session.add_user_turn(*parts)
    settings = greedy_settings(
        harness, max_new_tokens=tokens, min_new_tokens=tokens, talker_max_new_tokens=codes, talker_min_new_tokens=codes
    )
    events, done = run(session, settings)
    assert len(reference.thinker_tokens) == tokens and len(reference.talker_codes) == codes
    assert done.tokens == reference.thinker_tokens
    assert done.codes == reference.talker_codes
    audio = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
    assert len(audio) == len(reference.waveform) == codes * C.OUTPUT_SAMPLE_RATE // C.CODES_PER_SECOND


def test_random_builder_gives_the_architecture_with_new_weights(loaded):
    """`--model 3b/7b` build a real config with random weights; the same builder on the tiny config must give
    the tiny checkpoint's architecture, its voices' shapes, and an engine that answers."""
    from bench.models import load_for_bench

    built, label = load_for_bench("tiny-random", "cpu")
    assert "random weights" in label
    ours = dict(built.model.named_parameters())
    theirs = dict(loaded.model.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(ours[name].shape == theirs[name].shape for name in theirs)
    assert not torch.equal(ours["thinker.lm_head.weight"], theirs["thinker.lm_head.weight"])
    for name, voice in built.voices.items():
        assert voice["cond"].shape == loaded.voices[name]["cond"].shape
        assert voice["ref_mel"].shape == loaded.voices[name]["ref_mel"].shape
    session = OmniSession(built)
    session.add_user_turn(*cases.audio_case().turns[0].parts)
    settings = AnswerSettings(
        max_new_tokens=3,
        min_new_tokens=3,
        talker_max_new_tokens=30,
        talker_min_new_tokens=30,
        talker=Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
        noise_seed=0,
    )
    _, done = run(session, settings)
    assert len(done.tokens) == 3 and len(done.codes) == 30  # codes the DiT can embed, or token2wav would fail


def test_benchmark_runs_once_on_the_tiny_checkpoint(tiny_dir, tmp_path, capsys):
    from PIL import Image

    from bench.chart import COLOURS
    from bench.latency import main
    from bench.metrics import METRICS
    from bench.systems import SYSTEMS

    chart = tmp_path / "timeline.png"
    tokens, codes = 6, 40  # the engine's token2wav fires at 36 codes: two chunks
    argv = ["--model", str(tiny_dir), "--device", "cpu", "--tokens", str(tokens), "--codes", str(codes)]
    argv += ["--runs", "1", "--no-warmup", "--threads", "1", "--json", "--chart", str(chart)]
    threads = torch.get_num_threads()
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # put back: later tests' float sums depend on it
    result = json.loads(capsys.readouterr().out)

    assert set(result["systems"]) == set(SYSTEMS)
    assert result["scenario"]["tokens"] == tokens and result["scenario"]["codes"] == codes
    assert result["memory_kind"] == "cpu_peak_rss" and result["device"].startswith("CPU")
    reference = result["systems"]["reference"]["median"]
    for system, entry in result["systems"].items():
        figures, ratios = entry["median"], entry["ratio_to_reference"]
        assert set(METRICS) <= figures.keys() and set(METRICS) == ratios.keys()
        assert len(entry["runs"]) == 1
        # Every system gave the whole forced answer.
        assert figures["tokens"] == tokens and figures["codes"] == codes
        assert figures["audio_seconds"] == pytest.approx(codes / C.CODES_PER_SECOND)
        assert 0 < figures["first_text_s"] <= figures["first_audio_s"] <= figures["total_s"]
        for name in ("thinker_tokens_per_s", "talker_codes_per_s", "peak_memory_mib", "rtf_overall"):
            assert figures[name] > 0, (system, name)
        assert figures["rtf_overall"] == pytest.approx(figures["total_s"] / figures["audio_seconds"])
        assert figures["stage_busy_s"]["thinker"] > 0 and figures["stage_busy_s"]["DiT"] > 0
        for name in METRICS:
            if figures[name] is None or reference[name] is None:
                assert ratios[name] is None
            else:
                assert ratios[name] == pytest.approx(figures[name] / reference[name])
        if system == "reference":
            assert figures["chunks"] == 1 and figures["rtf_steady"] is None  # its audio comes all at once
            assert figures["first_audio_s"] == figures["total_s"]
        else:
            assert figures["chunks"] >= 2 and figures["rtf_steady"] > 0
            assert figures["first_audio_s"] < figures["total_s"]

    assert result["chart"] == str(chart)
    with Image.open(chart) as image:
        image.load()
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    for stage in ("input", "audio encoder", "thinker", "talker", "DiT", "BigVGAN"):
        assert COLOURS[stage] in colours, stage


def test_benchmark_runs_qwen3_omni_built_at_random_like_its_30b(qwen3_loaded, tmp_path, capsys):
    """`--model qwen3-30b-a3b` builds the released config with random weights on the GPU; the same builder on
    the tiny config gives the tiny checkpoint's architecture, and the benchmark measures it against
    transformers: the forced answer whole in every system, its stages (talker, code predictor, code2wav)."""
    from PIL import Image

    from bench.chart import COLOURS
    from bench.latency import main
    from bench.models import load_for_bench

    built, label = load_for_bench("tiny-random-qwen3", "cpu")
    assert "random weights" in label and built.family.name == "Qwen3-Omni"
    ours, theirs = dict(built.model.named_parameters()), dict(qwen3_loaded.model.named_parameters())
    assert ours.keys() == theirs.keys() and all(ours[n].shape == theirs[n].shape for n in theirs)

    chart = tmp_path / "timeline.png"
    tokens, frames = 5, 9  # the engine's code2wav: 4 frames, then the last 5
    argv = ["--model", "tiny-random-qwen3", "--device", "cpu", "--tokens", str(tokens), "--codes", str(frames)]
    argv += ["--runs", "1", "--no-warmup", "--threads", "1", "--json", "--chart", str(chart)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scenario"]["speech_seconds"] == pytest.approx(frames * 0.08)
    for system, entry in result["systems"].items():
        figures = entry["median"]
        assert figures["tokens"] == tokens and figures["codes"] == frames, system
        assert figures["audio_seconds"] == pytest.approx((frames * 1920 - 555) / C.OUTPUT_SAMPLE_RATE)
        assert {"thinker", "talker", "code predictor", "code2wav"} <= {k for k, v in figures["stage_busy_s"].items() if v > 0}
        assert figures["chunks"] == (1 if system == "reference" else 2)
    with Image.open(chart) as image:
        image.load()
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    for stage in ("thinker", "talker", "code predictor", "code2wav"):
        assert COLOURS[stage] in colours, stage


def test_transformers_first_text_is_when_its_first_logits_exist(loaded):
    """Not the end of the thinker's language model: its LM head runs after it, over every prompt position."""
    from bench.stages import StageRecorder
    from bench.systems import Scenario, run_reference
    from model.inputs.conversation import Audio
    from model.inputs.media import load_audio

    scenario = Scenario([Audio(load_audio(cases.SPOKEN_QUESTION))], 2.9, tokens=2, codes=30)
    with StageRecorder(loaded.model) as recorder:
        record = run_reference(loaded, scenario, recorder)
    thinker = [span for span in recorder.spans if span.stage == "thinker" and span.start >= record.zero]
    prefill, first_step = thinker[0], next(span for span in thinker if span.positions == 1)
    assert prefill.positions > 1
    assert prefill.end - record.zero < record.first_text < first_step.start - record.zero


def test_trimmed_log_mel_is_the_padded_one_bit_for_bit(loaded):
    """The processor computes trimmed audio features without 300 s of padding (a lever measured in
    docs/performance.md); every frame the model reads must still be the padded call's."""
    from model.families.qwen2_5_omni.processing import OmniProcessor

    ours = loaded.processor
    padded = OmniProcessor(
        ours.tokenizer, ours.feature_extractor, ours.image_processor, ours.video_processor, ours.chat_template,
        trim_audio_padding=False,
    )
    rng = np.random.default_rng(0)
    loud_end = np.concatenate([0.01 * rng.standard_normal(20_000), rng.standard_normal(3_333)])
    clips = [rng.standard_normal(16_001).astype(np.float32) * 0.1, loud_end.astype(np.float32), np.zeros(5_000, np.float32)]
    for batch in (clips, clips[:1], clips[1:2], clips[2:]):
        short, tokens = ours._audio_features(batch)
        full, full_tokens = padded._audio_features(batch)
        kept = short["input_features"].shape[-1]
        assert tokens == full_tokens and short["feature_attention_mask"].dtype == full["feature_attention_mask"].dtype
        assert torch.equal(short["feature_attention_mask"], full["feature_attention_mask"][:, :kept])
        assert not full["feature_attention_mask"][:, kept:].any()
        assert torch.equal(short["input_features"], full["input_features"][..., :kept])


def test_live_input_arrives_in_real_time_order():
    """The live system's schedule: 0.1 s audio chunks when recorded, frames at their timestamps, in order,
    the last arrival at the end of the speech (the benchmark's zero)."""
    from bench.systems import LIVE_CHUNK_SAMPLES, live_arrivals
    from model.inputs.conversation import Audio, Video
    from model.inputs.media import load_video

    clip = load_video(cases.VIDEO_WITH_SOUND)
    arrivals = live_arrivals([Video(clip)])
    times = [t for t, _, _ in arrivals]
    assert times == sorted(times)
    audio = [payload for _, kind, payload in arrivals if kind == "audio"]
    assert np.array_equal(np.concatenate(audio), clip.audio)
    assert all(len(chunk) == LIVE_CHUNK_SAMPLES for chunk in audio[:-1])
    frames = [(t, payload) for t, kind, payload in arrivals if kind == "frame"]
    assert [t for t, _ in frames] == [float(t) for t in clip.timestamps]
    assert times[-1] == pytest.approx(max(len(clip.audio) / C.INPUT_SAMPLE_RATE, float(clip.timestamps[-1])))
    speech = np.zeros(C.INPUT_SAMPLE_RATE + 5, np.float32)
    assert [t for t, _, _ in live_arrivals([Audio(speech)])][-1] == pytest.approx(len(speech) / C.INPUT_SAMPLE_RATE)


def test_the_gpu_check_stops_in_seconds_naming_what_is_missing(tmp_path):
    """bench/device_check.sh on a machine without the GPU it needs: it says so and stops before any model work."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OUT=str(tmp_path), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "bench/device_check.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert time.monotonic() - started < 60
    assert "MISSING: a CUDA GPU" in result.stdout
    assert "stopped: something is missing" in (tmp_path / "summary.txt").read_text()
    assert not (tmp_path / "parity.jsonl").exists()  # no step ran


def test_the_concurrency_benchmark_runs_every_scheduler_for_each_user_count(tiny_dir, capsys):
    """bench.concurrency on the tiny checkpoint: every user of every scheduler got the whole forced answer,
    and the table's ratios are the figures' own."""
    from bench.concurrency import SCHEDULERS, main, table

    tokens, codes = 4, 40
    argv = ["--model", str(tiny_dir), "--device", "cpu", "--users", "1,2", "--tokens", str(tokens),
            "--codes", str(codes), "--threads", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["results"]) == set(SCHEDULERS)
    for scheduler, by_users in result["results"].items():
        assert set(by_users) == {"1", "2"}
        for users, figures in by_users.items():
            wall = figures["wall_s"]
            assert figures["tokens_per_s"] == pytest.approx(int(users) * tokens / wall), scheduler
            assert figures["codes_per_s"] == pytest.approx(int(users) * codes / wall), scheduler
            assert 0 < figures["first_text_s"] <= figures["first_audio_s"] <= wall
            assert figures["rtf"] > 0
    result["results"] = {s: {int(n): f for n, f in by_users.items()} for s, by_users in result["results"].items()}
    rows = table(result).splitlines()[2:]
    assert len(rows) == 2 * len(SCHEDULERS)
    batched_two = next(r for r in rows if r.startswith("| batched | 2 |")).split(" | ")
    alone = result["results"]["batched"][1]["first_text_s"]
    assert float(batched_two[7]) == pytest.approx(result["results"]["batched"][2]["first_text_worst_s"] / alone, abs=0.01)
