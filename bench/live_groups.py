"""What Qwen3-Omni's 8 s audio groups cost at the end of a live turn.

    python -m bench.live_groups --model tiny-qwen3-omni --runs 5

Qwen3-Omni's audio encoder attends within 8 s groups, so the engine redoes a live window while its group
grows (model/engine/live_input.py) and the turn's cache ends as the whole turn's encoding. What is left when
the user stops is then the open group's windows, not only the last one: this times `end_user_turn` (from
the last audio to the cache ready for the answer's first token) for turns that end at several places in a
group, against the same turns with every 2 s window encoded alone (inexact: not what the model reads
offline), which is what Qwen2.5-Omni's encoder allows. Audio is fed in 0.1 s chunks as fast as it goes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np

from model.engine.session import OmniSession

CHUNK = 1600
LENGTHS = (2.0, 4.0, 7.9, 8.1, 12.0, 15.9)


def speech_like(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(int(seconds * 10))
    return (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)


def end_of_turn(loaded, seconds: float, grouped: bool) -> tuple[float, int]:
    """Seconds `end_user_turn` takes, and the windows it prefills (redone ones included)."""
    session = OmniSession(loaded)
    if not grouped:
        session.parts.audio_group_samples = 0
    audio = speech_like(seconds)
    for start in range(0, len(audio), CHUNK):
        session.feed_audio(audio[start : start + CHUNK])
    settled, redone = session.live_windows, session.windows_redone
    started = time.perf_counter()
    session.end_user_turn()
    elapsed = time.perf_counter() - started
    # The turn's windows not prefilled while it was heard, plus those rolled back at its end.
    return elapsed, math.ceil(seconds / 2) - settled + session.windows_redone - redone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_groups", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-qwen3-omni")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    from bench.models import load_for_bench, torch_threads

    rows = []
    with torch_threads(args.threads):
        loaded, label = load_for_bench(args.model)
        end_of_turn(loaded, 2.0, True)  # one-off costs
        for seconds in LENGTHS:
            row = {"seconds": seconds}
            for grouped in (True, False):
                times, windows = [], 0
                for _ in range(args.runs):
                    elapsed, windows = end_of_turn(loaded, seconds, grouped)
                    times.append(elapsed)
                key = "grouped" if grouped else "alone"
                row[f"{key}_ms"], row[f"{key}_windows"] = round(1000 * statistics.median(times), 1), windows
            row["ratio"] = round(row["grouped_ms"] / row["alone_ms"], 2)
            rows.append(row)
    print(json.dumps({"benchmark": "bench.live_groups", "model": label, "runs": args.runs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
