"""What a cheaper token2wav costs in fidelity and buys in time, on the same codes and the same noise.

    python -m bench.token2wav_quality --model tiny --codes 300

The reference is transformers' token2wav as it runs in generate: float32, RK4 over 10 time points, the whole
answer in one solve (`decode_whole`). Each variant streams the same codes through the engine's chunked
decoder (`StreamingToken2Wav`) with a solver, a number of ODE time points and a first-chunk size, and is
compared with the reference: the mel's relative L2 error and the waveform's SNR. The streamed RK4 default
is a variant too: its error is what the sliding windows alone cost, the floor every variant shares.
Time is DiT + BigVGAN compute for the whole answer and for the first chunk (what the first audio waits
for once the talker has the codes it needs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model import constants as C  # noqa: E402
from model.families.qwen2_5_omni.token2wav import FlowSettings, Voice, make_noise, solve_mel, vocode  # noqa: E402
from model.families.qwen2_5_omni.vocoder import StreamingToken2Wav  # noqa: E402


@dataclass(frozen=True)
class Variant:
    solver: str
    num_steps: int  # ODE time points
    first_chunk_frames: int
    chunk_frames: int = 48
    max_chunk_frames: int | None = None  # later chunks double up to it (None: all chunk_frames)

    @property
    def name(self) -> str:
        sizes = f"{self.first_chunk_frames}/{self.chunk_frames}"
        if self.max_chunk_frames and self.max_chunk_frames > self.chunk_frames:
            sizes += f" doubling to {self.max_chunk_frames}"
        return f"{self.solver} {self.num_steps} pts, chunks {sizes}"

    @property
    def passes_per_window(self) -> int:
        per_interval = 4 if self.solver == "rk4" else 1
        return per_interval * (self.num_steps - 1)


DEFAULT = Variant("rk4", 10, 48)  # the engine's default: transformers' solver, the Qwen fork's chunk
VARIANTS = [
    DEFAULT,
    Variant("rk4", 10, 24),
    Variant("rk4", 10, 48, 96),  # fewer, longer later windows: less overlap per second of speech
    Variant("rk4", 10, 24, 96),
    Variant("rk4", 10, 24, 48, 96),  # chunks that grow: 24, 48, 96, 96, ...
    Variant("rk4", 10, 24, 48, 192),
    Variant("rk4", 10, 24, 48, 384),
    Variant("rk4", 6, 48),
    Variant("euler", 10, 48),
    Variant("euler", 10, 24),
    Variant("euler", 6, 48),
    Variant("euler", 4, 48),
]


def relative_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(value - reference) / torch.linalg.vector_norm(reference))


def snr_db(value: np.ndarray, reference: np.ndarray) -> float:
    error = float(np.sum((value.astype(np.float64) - reference) ** 2))
    return float("inf") if error == 0 else 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / error)


def stream(token2wav, voice, codes: list[int], noise: torch.Tensor, variant: Variant) -> dict:
    """Streams `codes` one at a time; returns the mel and waveform it produced and what it cost."""
    decoder = StreamingToken2Wav(
        token2wav,
        voice,
        first_chunk_frames=variant.first_chunk_frames,
        chunk_frames=variant.chunk_frames,
        max_chunk_frames=variant.max_chunk_frames,
        solver=variant.solver,
        num_steps=variant.num_steps,
        noise=noise,
    )
    vocoder_inputs = []
    # Mel frames through the DiT, summed over its passes: a cost that timing noise on a shared CPU cannot blur
    # (on a GPU the DiT's cost grows with it; on the tiny CPU model each pass's fixed cost weighs more).
    dit_frames = [0]

    def count(module, args):  # the DiT's input projection: once per pass, over the window's frames
        dit_frames[0] += args[0].shape[1]

    hooks = [
        decoder.vocoder.register_forward_pre_hook(lambda module, args: vocoder_inputs.append(args[0])),
        decoder.dit.input_embed.proj.register_forward_pre_hook(count),
    ]
    chunks, seconds, first = [], 0.0, None
    try:
        for index, code in enumerate(codes):
            started = time.perf_counter()
            before = dit_frames[0]
            new = decoder.feed([code])
            seconds += time.perf_counter() - started
            if new and first is None:
                first = {"codes_needed": index + 1, "seconds": time.perf_counter() - started, "dit_frames": dit_frames[0] - before}
            chunks += new
        started = time.perf_counter()
        before = dit_frames[0]
        chunks += decoder.flush()
        seconds += time.perf_counter() - started
    finally:
        for hook in hooks:
            hook.remove()
    if first is None:  # the whole answer was one chunk, decoded at the flush
        first = {"codes_needed": len(codes), "seconds": seconds, "dit_frames": dit_frames[0] - before}
    # Each vocoder call saw [left context, the chunk's own mel]: the chunks' own mel is the streamed mel.
    mel = torch.cat(
        [mel[:, :, plan.start - plan.vocoder_start :] for mel, plan in zip(vocoder_inputs, decoder.state.decoded)], dim=-1
    )
    return {
        "mel": mel,
        "waveform": np.concatenate(chunks),
        "seconds": seconds,
        "dit_frames": dit_frames[0],
        "first_chunk": first,
        "chunks": len(chunks),
    }


def measure(loaded, n_codes: int, seed: int, variants: list[Variant], voice_name: str = "Chelsie") -> dict:
    token2wav = loaded.model.token2wav
    dit, vocoder = token2wav.code2wav_dit_model, token2wav.code2wav_bigvgan_model
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, C.DIT_NUM_EMBEDS, (n_codes,), generator=generator).tolist()
    frames = n_codes * dit.config.repeats
    noise = make_noise(seed, frames, dit.config.mel_dim)
    voice = Voice.from_spk_dict(loaded.voices[voice_name], next(dit.parameters()).device)

    started = time.perf_counter()
    reference_mel = solve_mel(dit, codes, voice, noise, FlowSettings())
    reference_wave = vocode(vocoder, reference_mel).numpy()
    reference_seconds = time.perf_counter() - started

    rows = []
    for variant in variants:
        out = stream(token2wav, loaded.voices[voice_name], codes, noise, variant)
        rows.append({
            "variant": variant.name,
            "solver": variant.solver,
            "ode_time_points": variant.num_steps,
            "first_chunk_frames": variant.first_chunk_frames,
            "chunk_frames": variant.chunk_frames,
            "max_chunk_frames": variant.max_chunk_frames or variant.chunk_frames,
            "dit_passes_per_window": variant.passes_per_window,
            "mel_relative_l2": relative_l2(out["mel"].cpu(), reference_mel.cpu()),
            "waveform_snr_db": snr_db(out["waveform"], reference_wave),
            "decode_seconds": out["seconds"],
            "dit_frame_passes": out["dit_frames"],
            "chunks": out["chunks"],
            "first_chunk_codes_needed": out["first_chunk"]["codes_needed"],
            "first_chunk_seconds": out["first_chunk"]["seconds"],
            "first_chunk_dit_frame_passes": out["first_chunk"]["dit_frames"],
        })
    return {
        "codes": n_codes,
        "speech_seconds": n_codes / C.CODES_PER_SECOND,
        "reference": {"variant": "whole answer, rk4 10 pts (transformers)", "decode_seconds": reference_seconds},
        "variants": rows,
    }


def table(result: dict) -> str:
    default = result["variants"][0]
    lines = [
        "| variant | DiT passes/window | mel rel. L2 | waveform SNR (dB) | DiT frame-passes (x default) | decode s (x default) "
        "| first chunk: codes needed | first chunk: DiT frame-passes (x default) | first chunk s (x default) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def versus(row, key, digits):
        return f"{row[key]:,.{digits}f} ({row[key] / default[key]:.2f}x)"

    for row in result["variants"]:
        lines.append(
            f"| {row['variant']} | {row['dit_passes_per_window']} | {row['mel_relative_l2']:.4f} | "
            f"{row['waveform_snr_db']:.1f} | {versus(row, 'dit_frame_passes', 0)} | {versus(row, 'decode_seconds', 2)} | "
            f"{row['first_chunk_codes_needed']} | {versus(row, 'first_chunk_dit_frame_passes', 0)} | "
            f"{versus(row, 'first_chunk_seconds', 3)} |"
        )
    reference = result["reference"]
    lines.append(f"\nreference ({reference['variant']}): {reference['decode_seconds']:.2f} s for {result['speech_seconds']:g} s of speech")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.latency import describe_device
    from bench.models import load_for_bench, torch_threads

    parser = argparse.ArgumentParser(prog="python -m bench.token2wav_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (default), tiny-random, 3b, 7b or a checkpoint directory")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--codes", type=int, default=300, help="answer length in talker codes (random, seeded)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the codes and the noise")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        loaded, label = load_for_bench(args.model, args.device)
        result = measure(loaded, args.codes, args.seed, VARIANTS)
    result.update({
        "benchmark": "bench.token2wav_quality",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.token2wav_quality " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": label,
        "device": describe_device(loaded.device),
    })
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{label}\n{result['device']}, {result['date']}\n{result['command']}\n")
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
