"""Several people asking at once: each one's first text, first audio and real-time factor, and the server's
aggregate tokens and codes per second, for 1, 2, 4, 8 ... users, three ways side by side in one run:

* `batched`: the app's model worker (omni_demo/worker.py), every answering conversation's decode step in
  one forward per decoder, up to `users` at once;
* `interleaved`: the same worker stepping the answers one forward each, two at a time (the scheduler before
  batching, at its default of two);
* `transformers`: transformers' `generate(return_audio=True)` per user, one after another, as the official
  demo serves a queue (its text and audio arrive when it returns).

Every user sends a typed question at the same moment (t = 0) and every answer has the same forced length,
so the runs differ only in how they share the model. Times are seconds from t = 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from bench.latency import describe_device
from bench.systems import Scenario
from model.engine.batched_step import Step
from model.engine.events import SpeechPending
from model.inputs.conversation import Conversation, Text
from model.session import AnswerDone, AnswerSettings, AudioChunk, OmniSession, TextDelta
from omni_demo.worker import ModelWorker

SCHEDULERS = ("batched", "interleaved", "transformers")
QUESTION = "User {user}: tell me about the sea, please."


@dataclass
class UserRecord:
    first_text: float | None = None
    first_audio: float | None = None
    total: float = 0.0
    tokens: int = 0
    codes: int = 0
    audio_seconds: float = 0.0

    @property
    def rtf(self) -> float | None:
        return self.total / self.audio_seconds if self.audio_seconds else None


def answer_job(session: OmniSession, user: int, settings: AnswerSettings, zero: float, record: UserRecord):
    """A typed turn and its answer, as the app's tab runs them on the worker (omni_demo/tab_model.py)."""
    yield from session.adding_user_turn(Text(QUESTION.format(user=user)))
    yield
    for event in session.respond(settings, batched=True):
        now = time.perf_counter() - zero
        if isinstance(event, Step):
            yield event
            continue
        if isinstance(event, TextDelta) and record.first_text is None:
            record.first_text = now
        elif isinstance(event, AudioChunk):
            record.first_audio = now if record.first_audio is None else record.first_audio
            record.audio_seconds += len(event.samples) / event.sample_rate
        elif isinstance(event, AnswerDone):
            record.tokens, record.codes, record.total = len(event.tokens), len(event.codes), now
        elif isinstance(event, SpeechPending):
            yield


def run_worker(loaded, scenario: Scenario, users: int, batched: bool, text_only: bool = False) -> list[UserRecord]:
    worker = ModelWorker(max_active=users if batched else 2, batch=batched)
    records = [UserRecord() for _ in range(users)]
    sessions = [OmniSession(loaded, decode=scenario.decode) for _ in range(users)]
    try:
        zero = time.perf_counter()
        for user, (session, record) in enumerate(zip(sessions, records)):
            settings = dataclasses.replace(scenario.engine_settings(), text_only=text_only)
            worker.submit(user, answer_job(session, user, settings, zero, record))
        if not worker.idle(3600):
            raise RuntimeError("the answers did not finish within an hour")
    finally:
        worker.stop()
    return records


def run_transformers(loaded, scenario: Scenario, users: int, text_only: bool = False) -> list[UserRecord]:
    if text_only:  # transformers' thinker alone
        return run_transformers_text(loaded, scenario, users)
    records = []
    zero = time.perf_counter()
    for user in range(users):
        conversation = Conversation(loaded.family.system_prompt)
        conversation.add_user(Text(QUESTION.format(user=user)))
        result = loaded.family.forced_reference(
            loaded, conversation, voice=scenario.voice, tokens=scenario.tokens, codes=scenario.codes, seed=scenario.seed
        )
        done = time.perf_counter() - zero
        records.append(UserRecord(done, done, done, len(result.thinker_tokens), len(result.talker_codes),
                                  result.audio_seconds))
    return records


def run_transformers_text(loaded, scenario: Scenario, users: int) -> list[UserRecord]:
    """The thinker's `generate`, greedy, `tokens` long, for one user after another."""
    from model.families.reference_parts import prepare_inputs

    records = []
    zero = time.perf_counter()
    for user in range(users):
        conversation = Conversation(loaded.family.system_prompt)
        conversation.add_user(Text(QUESTION.format(user=user)))
        inputs = prepare_inputs(loaded.processor, conversation).to(loaded.device)
        out = loaded.model.thinker.generate(**inputs, max_new_tokens=scenario.tokens, min_new_tokens=scenario.tokens,
                                            do_sample=False)
        done = time.perf_counter() - zero
        records.append(UserRecord(done, None, done, out.shape[1] - inputs["input_ids"].shape[1]))
    return records


def summarise(records: list[UserRecord]) -> dict:
    wall = max(r.total for r in records)
    rtfs = [r.rtf for r in records if r.rtf is not None]
    audio = [r.first_audio for r in records if r.first_audio is not None]
    return {
        "first_text_s": statistics.median(r.first_text for r in records),
        "first_text_worst_s": max(r.first_text for r in records),
        "first_audio_s": statistics.median(audio) if audio else None,
        "first_audio_worst_s": max(audio) if audio else None,
        "rtf": statistics.median(rtfs) if rtfs else None,
        "rtf_worst": max(rtfs) if rtfs else None,
        "tokens_per_s": sum(r.tokens for r in records) / wall,
        "codes_per_s": sum(r.codes for r in records) / wall,
        "wall_s": wall,
    }


RUNNERS = {
    "batched": lambda loaded, scenario, users, text_only: run_worker(loaded, scenario, users, True, text_only),
    "interleaved": lambda loaded, scenario, users, text_only: run_worker(loaded, scenario, users, False, text_only),
    "transformers": run_transformers,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (default), tiny-qwen3-omni, 7b (random weights), ...")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if there is one")
    parser.add_argument("--users", default="1,2,4,8", help="how many people ask at once, comma-separated")
    parser.add_argument("--tokens", type=int, default=40, help="thinker tokens of each answer (forced)")
    parser.add_argument("--codes", type=int, default=100, help="talker codes (Qwen3-Omni: frames) of each answer (forced)")
    parser.add_argument("--decode", choices=("auto", "growing", "static", "compiled"), default="auto",
                        help="the engine's KV caches and lone decode steps (auto: compiled on CUDA, else growing)")
    parser.add_argument("--text-only", action="store_true",
                        help="answers without speech: the decode steps alone, without the vocoder's share")
    parser.add_argument("--schedulers", nargs="+", choices=SCHEDULERS, default=list(SCHEDULERS))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def run(args) -> dict:
    from bench.models import load_for_bench

    loaded, label = load_for_bench(args.model, args.device)
    scenario = Scenario(parts=[], input_seconds=0.0, tokens=args.tokens, codes=args.codes,
                        voice=loaded.family.default_voice, decode=args.decode)
    users = [int(n) for n in args.users.split(",")]
    for scheduler in args.schedulers:  # first calls pay one-off costs (allocations, lazy initialisation)
        warm = dataclasses.replace(scenario, tokens=4, codes=8)
        RUNNERS[scheduler](loaded, warm, 1, args.text_only)
    results = {s: {} for s in args.schedulers}
    for count in users:
        for scheduler in args.schedulers:
            results[scheduler][count] = summarise(RUNNERS[scheduler](loaded, scenario, count, args.text_only))
    return {
        "benchmark": "bench.concurrency",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.concurrency " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "model": label,
        "device": describe_device(loaded.device),
        "torch": torch.__version__,
        "tokens": args.tokens,
        "codes": 0 if args.text_only else args.codes,
        "results": results,
    }


def table(result: dict) -> str:
    """One row per scheduler and user count; ratios against one user alone with the batched worker."""
    results = result["results"]
    alone = results.get("batched", {}).get(1)
    head = ["scheduler", "users", "first text", "first audio", "RTF", "tokens/s", "codes/s",
            "first text / alone", "first audio / alone", "RTF / alone", "tokens/s / interleaved",
            "codes/s / interleaved"]
    rows = []
    for scheduler, by_users in results.items():
        for count, s in by_users.items():
            interleaved = results.get("interleaved", {}).get(count)

            def ratio(value, base):
                return f"{value / base:.2f}" if value is not None and base else "–"

            audio = s["first_audio_s"]
            rows.append([
                scheduler, str(count),
                f"{s['first_text_s']:.3f} (worst {s['first_text_worst_s']:.3f})",
                "–" if audio is None else f"{audio:.3f} (worst {s['first_audio_worst_s']:.3f})",
                "–" if s["rtf"] is None else f"{s['rtf']:.2f} (worst {s['rtf_worst']:.2f})",
                f"{s['tokens_per_s']:.1f}", f"{s['codes_per_s']:.1f}",
                ratio(s["first_text_worst_s"], alone and alone["first_text_s"]),
                ratio(s["first_audio_worst_s"], alone and alone["first_audio_s"]),
                ratio(s["rtf_worst"], alone and alone["rtf"]),
                ratio(s["tokens_per_s"], interleaved and interleaved["tokens_per_s"]),
                ratio(s["codes_per_s"], interleaved and interleaved["codes_per_s"]),
            ])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    from bench.models import torch_threads

    with torch_threads(args.threads):
        result = run(args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['model']}\n{result['device']}, {result['date']}\n{result['command']}\n")
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
