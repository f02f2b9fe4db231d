"""Side-by-side latency: transformers' generate, our engine with the whole input, our engine fed live.

    python -m bench.latency --model tiny --tokens 120 --codes 600 --chart docs/timeline-tiny.png
    python -m bench.latency --model 7b --device cuda --runs 3 --json

All systems run in one process on the same weights and input, one after another in each round (so a
noisy machine slows them alike), and answer with the same forced length: the thinker's and the talker's
EOS are suppressed until `--tokens` / `--codes` and decoding is greedy, so random weights do the real
amount of work. It prints a table of medians over `--runs` with each figure's ratio to the reference
(or, with `--json`, one JSON object), and `--chart` draws a timeline of each system's median round.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # config warnings about the checkpoint are not results

import torch  # noqa: E402

from bench.metrics import COUNTS, METRICS, SystemSummary, turn_metrics
from bench.systems import SYSTEMS, Scenario, measure
from model import constants as C
from model.engine.events import AnswerSettings
from model.families.qwen2_5_omni.token2wav import ODE_TIME_POINTS, SOLVERS
from model.inputs import cases
from model.inputs.conversation import Audio, Video
from model.inputs.media import load_audio, load_video

WARMUP_TOKENS, WARMUP_CODES = 4, 40  # enough for every stage to run once (one token2wav chunk)
LABELS = {"reference": "transformers", "engine_whole": "engine, whole input", "engine_live": "engine, live input"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (default), tiny-qwen3-omni, tiny-random, 3b, 7b (random weights) or a checkpoint directory")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if there is one")
    parser.add_argument("--runs", type=int, default=1, help="rounds of the three systems (medians are reported)")
    parser.add_argument("--tokens", type=int, default=120, help="thinker tokens of the answer (forced)")
    parser.add_argument("--codes", type=int, default=600, help="talker codes of the answer (forced; 50 per second of speech; Qwen3-Omni: frames, 12.5 per second)")
    parser.add_argument("--video", action="store_true", help=f"ask with {cases.VIDEO_WITH_SOUND.name} (2 fps frames and its sound)")
    parser.add_argument("--solver", choices=SOLVERS, default="rk4", help="the engine's token2wav ODE solver")
    parser.add_argument("--ode-steps", type=int, default=ODE_TIME_POINTS, help="the engine's ODE time points")
    defaults = AnswerSettings()
    parser.add_argument("--first-chunk-frames", type=int, default=defaults.first_chunk_frames, help="the engine's first token2wav chunk (mel frames, multiple of 24)")
    parser.add_argument("--chunk-frames", type=int, default=defaults.chunk_frames, help="the engine's second token2wav chunk; later ones double (mel frames, multiple of 24)")
    parser.add_argument("--max-chunk-frames", type=int, default=defaults.max_chunk_frames, help="where the engine's chunks stop doubling")
    parser.add_argument("--decode", choices=("auto", "growing", "static", "compiled"), default="auto", help="the engine's KV caches and decode steps (auto: compiled on CUDA, else growing)")
    parser.add_argument("--stage-sync", choices=("auto", "on", "off"), default="auto", help="stage hooks synchronise the GPU (auto: on CUDA); off: spans are launch times, figures keep every overlap")
    parser.add_argument("--speech-thread", choices=("auto", "on", "off"), default="auto", help="token2wav on its own thread (auto: on CUDA only)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="reference is always measured")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the short untimed answer of each system first")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--chart", metavar="PNG", help="draw each system's median round (by first audio) as a timeline here")
    return parser


def make_scenario(args) -> Scenario:
    if args.video:
        clip = load_video(cases.VIDEO_WITH_SOUND)
        parts = [Video(clip)]
        seconds = max(len(clip.audio) / C.INPUT_SAMPLE_RATE if clip.audio is not None else 0.0, float(clip.timestamps[-1]) + 0.5)
    else:
        samples = load_audio(cases.SPOKEN_QUESTION)
        parts, seconds = [Audio(samples)], len(samples) / C.INPUT_SAMPLE_RATE
    return Scenario(
        parts,
        seconds,
        tokens=args.tokens,
        codes=args.codes,
        solver=args.solver,
        num_steps=args.ode_steps,
        first_chunk_frames=args.first_chunk_frames,
        chunk_frames=args.chunk_frames,
        max_chunk_frames=args.max_chunk_frames,
        speech_thread={"auto": None, "on": True, "off": False}[args.speech_thread],
        decode=args.decode,
        stage_sync={"auto": None, "on": True, "off": False}[args.stage_sync],
    )


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MiB":
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table(result: dict) -> str:
    systems = list(result["systems"])
    head = ["figure"] + [LABELS[s] for s in systems]
    rows = []
    for name, (unit, _) in METRICS.items():
        row = [f"{name} ({unit})"]
        for system in systems:
            entry = result["systems"][system]
            cell = format_value(entry["median"][name], unit)
            factor = entry["ratio_to_reference"][name]
            if system != "reference" and factor is not None:
                cell += f" ({factor:.2f}x)"
            row.append(cell)
        rows.append(row)
    for name in COUNTS:
        values = [result["systems"][s]["median"][name] for s in systems]
        rows.append([name] + [f"{v:g}" for v in values])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(head, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    lines += ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |" for r in rows]
    return "\n".join(lines)


def run(args) -> dict:
    from bench.chart import draw_timeline
    from bench.models import load_for_bench

    loaded, label = load_for_bench(args.model, args.device)
    scenario = make_scenario(args)
    # --codes counts the talker's steps: Qwen2.5-Omni's codes, Qwen3-Omni's 80 ms frames of 16 codes.
    scenario = dataclasses.replace(scenario, codes_per_second=loaded.family.codes_per_second(loaded.model))
    systems = ["reference"] + [s for s in SYSTEMS if s != "reference" and s in args.systems]
    if not args.no_warmup:  # first calls pay one-off costs (allocations, lazy initialisation)
        warm = dataclasses.replace(scenario, tokens=min(scenario.tokens, WARMUP_TOKENS), codes=min(scenario.codes, WARMUP_CODES))
        for system in systems:
            measure(system, loaded, warm)
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    records: dict[str, list] = {s: [] for s in systems}
    for _ in range(args.runs):
        for system in systems:
            records[system].append(measure(system, loaded, scenario))
            runs[system].append(turn_metrics(records[system][-1]))
    summaries = {s: SystemSummary(s, runs[s]) for s in systems}
    result = {
        "benchmark": "bench.latency",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.latency " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "model": label,
        "device": describe_device(loaded.device),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "runs": args.runs,
        "scenario": scenario.describe(),
        "memory_kind": "cuda_max_allocated" if loaded.device.type == "cuda" else "cpu_peak_rss",
        "metrics": {name: {"unit": unit, "meaning": meaning} for name, (unit, meaning) in METRICS.items()},
        "systems": {
            s: {
                "label": LABELS[s],
                "median": summaries[s].median,
                "ratio_to_reference": summaries[s].ratios(summaries["reference"]),
                "runs": runs[s],
            }
            for s in systems
        },
        "chart": None,
    }
    if args.chart:
        asked = "video with its sound" if args.video else "spoken question"
        title = f"{label}; {scenario.input_seconds:.1f} s {asked}, {scenario.tokens} tokens, {scenario.codes} codes"
        # Each system's round with the median first audio: typical, where the last round may be an outlier.
        typical = [sorted(records[s], key=lambda r: r.first_audio)[(args.runs - 1) // 2] for s in systems]
        result["chart"] = str(draw_timeline(typical, args.chart, title))
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.runs < 1 or args.tokens < 1 or args.codes < 1:
        print("error: --runs, --tokens and --codes must be at least 1", file=sys.stderr)
        return 2
    from bench.models import torch_threads

    with torch_threads(args.threads):
        result = run(args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['model']}\n{result['device']}, {result['date']}\n{result['command']}\n")
        print(table(result))
        if result["chart"]:
            print(f"\ntimeline: {result['chart']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
