"""The engine against transformers' generate on one device and dtype: where their greedy choices part.

    python -m bench.parity --model 7b --device cuda --dtype float32
    python -m bench.parity --model 7b --device cuda --dtype bfloat16

For each input case (text, a spoken question) it runs one answer through `OmniSession` and through
`Qwen2_5OmniForConditionalGeneration.generate` on the same weights, greedy (the talker with its repetition
penalty), the same token2wav noise, and reports: whether the prompts are the same ids; the first thinker
token and the first talker code where the two part, with the engine's top-2 margin there (a part at a tiny
margin is float noise between two equivalent computations; at a large one, a bug); and, where every code
agrees and the answer fits one token2wav window, whether the waveforms are the same samples. In float32 the
choices must agree; in bfloat16 they may part at a near-tie.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from model import constants as C
from model.engine.events import AnswerDone, AnswerSettings, AudioChunk
from model.engine.sampling import Sampling
from model.families.qwen2_5_omni.reference import TalkerSampling, reference_generate
from model.inputs import cases
from model.session import OmniSession

CASES = ("text", "audio")


def first_part(ours: list[int], theirs: list[int], margins: list[float]) -> dict | None:
    """Where two choice sequences part: the step, both choices and the engine's margin; None if equal."""
    for step, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return {"step": step, "engine": a, "transformers": b, "margin": margins[step] if step < len(margins) else None}
    if len(ours) != len(theirs):
        step = min(len(ours), len(theirs))
        return {"step": step, "engine": len(ours), "transformers": len(theirs), "margin": None, "lengths": True}
    return None


def compare(loaded, case: str, tokens: int) -> dict:
    conversation = cases.SINGLE_TURN_CASES[case]()
    session = OmniSession(loaded)
    session.add_user_turn(*conversation.turns[0].parts)
    settings = AnswerSettings(
        max_new_tokens=tokens,
        talker=Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
        noise_seed=0,
        first_chunk_frames=48,  # a short answer in one window, as transformers decodes it
        margins=True,
    )
    events = list(session.respond(settings))
    done = events[-1]
    assert isinstance(done, AnswerDone)
    reference = reference_generate(loaded, conversation, max_new_tokens=tokens, talker=TalkerSampling(greedy=True), noise_seed=0)
    audio = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)] or [np.zeros(0, np.float32)])
    result = {
        "case": case,
        "prompt_equal": session.thinker.ids[: len(reference.prompt_ids)] == reference.prompt_ids,
        "tokens": len(done.tokens),
        "codes": len(done.codes),
        "audio_samples": len(audio),
        "audio_finite": bool(np.isfinite(audio).all()),
        "tokens_part": first_part(done.tokens, reference.thinker_tokens, done.token_margins),
        "smallest_token_margin": min(done.token_margins, default=None),
    }
    if result["tokens_part"] is None:
        result["codes_part"] = first_part(done.codes, reference.talker_codes, done.code_margins)
        result["smallest_code_margin"] = min(done.code_margins, default=None)
        if result["codes_part"] is None and reference.waveform is not None:
            same_length = len(audio) == len(reference.waveform)
            result["waveform_equal"] = bool(same_length and np.array_equal(audio, reference.waveform))
            if same_length:
                result["waveform_max_abs_diff"] = float(np.abs(audio - reference.waveform).max())
    return result


def main(argv: list[str] | None = None) -> int:
    from bench.latency import describe_device
    from bench.models import load_for_bench, torch_threads

    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (default), tiny-random, 3b, 7b or a checkpoint directory")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="thinker and talker (default: bf16 on CUDA)")
    parser.add_argument("--tokens", type=int, default=24, help="the longest answer, in thinker tokens")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    with torch_threads(args.threads):
        loaded, label = load_for_bench(args.model, args.device, dtype)
        results = [compare(loaded, case, args.tokens) for case in CASES]
        report = {"benchmark": "bench.parity", "model": label, "device": describe_device(loaded.device), "cases": results}
    print(json.dumps(report))  # one line: the GPU script collects several runs in one JSON-lines file
    exact = all(r["prompt_equal"] and r["tokens_part"] is None and r.get("codes_part") is None for r in results)
    return 0 if exact or loaded.dtype != torch.float32 else 1


if __name__ == "__main__":
    sys.exit(main())
