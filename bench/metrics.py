"""The figures a turn is judged by, and their ratios to transformers' reference measured in the same run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.stages import QWEN3_STAGES, STAGES, Span

ALL_STAGES = list(STAGES) + [s for s in QWEN3_STAGES if s not in STAGES]
from bench.systems import TurnRecord

# name -> (unit, what it is). Lower is better for every figure but the two rates.
METRICS = {
    "first_text_s": ("s", "end of input -> first text token"),
    "first_audio_s": ("s", "end of input -> first audio chunk"),
    "total_s": ("s", "end of input -> answer complete"),
    "rtf_steady": ("x", "compute time / audio seconds after the first chunk"),
    "rtf_overall": ("x", "total time / audio seconds"),
    "thinker_tokens_per_s": ("1/s", "thinker decode steps / their wall time"),
    "talker_codes_per_s": ("1/s", "talker decode steps / their wall time"),
    "peak_memory_mib": ("MiB", "peak memory during the turn"),
}
COUNTS = ("tokens", "codes", "audio_seconds", "chunks")


def _decode_rate(spans: list[Span], stage: str) -> float | None:
    """Decode steps (calls over one position) per second of wall time from the first step's start to the
    last one's end: for our engine that includes the other stages' work interleaved with the steps."""
    steps = [s for s in spans if s.stage == stage and s.positions == 1 and s.start >= 0]
    if not steps:
        return None
    wall = max(s.end for s in steps) - min(s.start for s in steps)
    return len(steps) / wall if wall > 0 else None


def busy_seconds(spans: list[Span]) -> dict[str, float]:
    """Seconds each stage of the model computed after the end of input."""
    stages = [stage for stage in ALL_STAGES if any(s.stage == stage for s in spans)]
    return {stage: sum(s.end - max(s.start, 0.0) for s in spans if s.stage == stage and s.end > 0) for stage in stages}


def turn_metrics(record: TurnRecord) -> dict:
    after_first = record.audio_seconds - record.first_chunk_seconds
    steady = None
    if record.first_audio is not None and after_first > 0:
        steady = (record.total - record.first_audio) / after_first
    values = {
        "first_text_s": record.first_text,
        "first_audio_s": record.first_audio,
        "total_s": record.total,
        "rtf_steady": steady,  # None for the reference: all of its audio is one chunk
        "rtf_overall": record.total / record.audio_seconds if record.audio_seconds else None,
        "thinker_tokens_per_s": _decode_rate(record.spans, "thinker"),
        "talker_codes_per_s": _decode_rate(record.spans, "talker"),
        "peak_memory_mib": record.peak_memory_mib,
    }
    values.update({name: getattr(record, name) for name in COUNTS})
    values["stage_busy_s"] = busy_seconds(record.spans)
    return values


def median(runs: list[dict], name: str) -> float | None:
    values = [run[name] for run in runs if run[name] is not None]
    return statistics.median(values) if values else None


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


@dataclass
class SystemSummary:
    system: str
    runs: list[dict]  # turn_metrics of each run

    @property
    def median(self) -> dict:
        figures = {name: median(self.runs, name) for name in (*METRICS, *COUNTS)}
        stages = [stage for stage in ALL_STAGES if any(stage in run["stage_busy_s"] for run in self.runs)]
        figures["stage_busy_s"] = {
            stage: statistics.median(run["stage_busy_s"].get(stage, 0.0) for run in self.runs) for stage in stages
        }
        return figures

    def ratios(self, reference: SystemSummary) -> dict:
        mine, theirs = self.median, reference.median
        return {name: ratio(mine[name], theirs[name]) for name in METRICS}
