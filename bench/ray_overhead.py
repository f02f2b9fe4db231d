"""What Ray adds: the same calls on a replica (omni_demo/replica.py) through its Ray actor, and on the same
class in this process (its model worker's thread doing the work in both, as the app's does in one
process), one after the other on the same machine and checkpoint.

* a live window: 2 s of sound (noise at -20 dB) and its four camera frames, `feed` (prefilled at once: each window
  is a settled one), from the call to its result here;
* an answer's events: the same answer (same seed) streamed from the replica and made here; each event's
  arrival time from the answer's start, here against there. The first event's difference is what a turn's
  start costs; the slope of the difference over the events is what each streamed event adds.

    python -m bench.ray_overhead --model tiny --windows 10 --answers 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import numpy as np

from bench.latency import describe_device
from model.engine.events import AnswerSettings, AudioChunk, TextDelta
from model.inputs.conversation import Text
from omni_demo.capture import camera_frame
from omni_demo.replica import Replica
from omni_demo.replicas import Replicas


def voice_window(rng: np.random.Generator) -> tuple[np.ndarray, list]:
    audio = (0.1 * rng.standard_normal(32_000)).astype(np.float32)
    frames = [(camera_frame(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)), 0.5 * i) for i in range(4)]
    return audio, frames


def remote(replicas: Replicas, tab: str):
    """A raw binding: the replica's calls with their sequence numbers, as RemoteSession makes them."""
    binding = replicas.bind(tab)
    handle = binding.replica.handle

    def call(name, *args):
        return handle.call.remote(binding.incarnation, binding.tab, binding.next_seq(), name, *args)

    def answer(settings):
        return handle.answer.options(num_returns="streaming").remote(binding.incarnation, binding.tab,
                                                                    binding.next_seq(), settings)

    return call, answer


def windows(ray, replicas, local: Replica, count: int) -> dict:
    rng = np.random.default_rng(0)
    here, there = [], []
    for index in range(count):
        audio, frames = voice_window(rng)
        local.call(local.incarnation, f"window-{index}", 0, "start", None, None, [])
        start = time.perf_counter()
        local.call(local.incarnation, f"window-{index}", 1, "feed", audio, frames)
        here.append(time.perf_counter() - start)
        call, _ = remote(replicas, f"window-{index}")
        ray.get(call("start", None, None, []))
        start = time.perf_counter()
        ray.get(call("feed", audio, frames))
        there.append(time.perf_counter() - start)
    added = [b - a for a, b in zip(here, there)]
    return {"windows": count, "local_s": statistics.median(here), "replica_s": statistics.median(there),
            "added_s_median": statistics.median(added), "added_s_max": max(added)}


def answers(ray, replicas, local: Replica, count: int, tokens: int) -> dict:
    settings = AnswerSettings(voice=local.loaded.voice_names[0], max_new_tokens=tokens, min_new_tokens=tokens, seed=1)
    first, per_event, events = [], [], 0
    for index in range(count):
        question = Text(f"Question {index}: tell me about the sea.")
        tab = f"answer-{index}"
        local.call(local.incarnation, tab, 0, "start", None, None, [])
        local.call(local.incarnation, tab, 1, "add_user_turn", [question], None)
        start, here = time.perf_counter(), []
        for event in local.answer(local.incarnation, tab, 2, settings):
            if isinstance(event, (TextDelta, AudioChunk)):
                here.append(time.perf_counter() - start)
        call, answer = remote(replicas, tab)
        ray.get(call("start", None, None, []))
        ray.get(call("add_user_turn", [question], None))
        start, there = time.perf_counter(), []
        for ref in answer(settings):
            if isinstance(ray.get(ref), (TextDelta, AudioChunk)):  # (then AnswerDone, the history's change)
                there.append(time.perf_counter() - start)
        assert len(here) == len(there), (len(here), len(there))
        difference = [b - a for a, b in zip(here, there)]
        first.append(difference[0])
        per_event.append(float(np.polyfit(np.arange(len(difference)), difference, 1)[0]))
        events = len(here)
    return {"answers": count, "events_each": events, "first_event_added_s_median": statistics.median(first),
            "per_event_added_s_median": statistics.median(per_event)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--answers", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import ray

    replicas = Replicas.start(args.model, count=1, device="cpu", ray_init={"num_cpus": 2, "log_to_driver": False})
    local = Replica(args.model, "cpu")
    try:
        result = {
            "command": "python -m bench.ray_overhead " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "device": describe_device(local.loaded.device),
            "ray": ray.__version__,
            "live_window": windows(ray, replicas, local, args.windows),
            "answer_events": answers(ray, replicas, local, args.answers, args.tokens),
        }
    finally:
        local.worker.stop()
        replicas.stop()
        ray.shutdown()
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
