"""Where a turn's time goes: forward hooks on the model's stages, the same for every system measured.

Each call of a stage's module leaves a `Span` (absolute `time.perf_counter()` seconds and the number of
positions it processed for the two decoders), so a decode step is a span of length 1 whatever code made
the call: transformers' generate or our engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# Stage name -> module path in Qwen2_5OmniForConditionalGeneration, in pipeline order; or the paths of the
# first and last module a call runs, where the engine runs the stage's parts rather than its forward (a DiT
# pass: model/families/qwen2_5_omni/dit_window.py; a code2wav chunk: model/families/qwen3_omni/vocoder.py).
DIT = "token2wav.code2wav_dit_model"
STAGES = {
    "audio encoder": "thinker.model.audio_tower",
    "vision encoder": "thinker.model.visual",
    "thinker": "thinker.model.language_model",
    "talker": "talker.model",
    "DiT": (f"{DIT}.input_embed.proj", f"{DIT}.proj_out"),
    "BigVGAN": "token2wav.code2wav_bigvgan_model",
}
# The same for Qwen3OmniMoeForConditionalGeneration: its talker's code predictor, and code2wav.
QWEN3_STAGES = {
    "audio encoder": "thinker.model.audio_tower",
    "vision encoder": "thinker.model.visual",
    "thinker": "thinker.model.language_model",
    "talker": "talker.model",
    "code predictor": "talker.code_predictor.model",
    "code2wav": ("code2wav.code_embedding", "code2wav.decoder.{last}"),
}


def stages_of(model: torch.nn.Module) -> dict[str, str | tuple[str, str]]:
    if not hasattr(model, "code2wav"):
        return STAGES
    last = len(model.code2wav.decoder) - 1
    return {name: tuple(p.format(last=last) for p in path) if isinstance(path, tuple) else path for name, path in QWEN3_STAGES.items()}
DECODERS = ("thinker", "talker")


@dataclass
class Span:
    stage: str
    start: float
    end: float
    positions: int = 0  # sequence length of a decoder call (1: one decode step); 0 for other stages


def _positions(args, kwargs) -> int:
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        return int(ids.shape[1]) if isinstance(ids, torch.Tensor) else 0
    return int(embeds.shape[1])


class StageRecorder:
    """Records a Span per stage call while active (`with recorder: ...`). On CUDA each hook synchronises,
    so spans are compute, not launch, times; that costs a little, and `sync=False` turns it off."""

    def __init__(self, model: torch.nn.Module, sync: bool | None = None):
        self.model = model
        device = next(model.parameters()).device
        self.sync = device.type == "cuda" if sync is None else sync
        self.spans: list[Span] = []
        self._handles = []
        self._open: dict[str, list[tuple[float, int]]] = {}

    def now(self) -> float:
        """Now, once the GPU has finished what it was given (with `sync`)."""
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def __enter__(self) -> StageRecorder:
        for stage, path in stages_of(self.model).items():
            first, last = (path, path) if isinstance(path, str) else path

            def before(module, args, kwargs, stage=stage):
                positions = _positions(args, kwargs) if stage in DECODERS else 0
                self._open.setdefault(stage, []).append((self.now(), positions))

            def after(module, args, kwargs, output, stage=stage):
                start, positions = self._open[stage].pop()
                self.spans.append(Span(stage, start, self.now(), positions))

            self._handles.append(self.model.get_submodule(first).register_forward_pre_hook(before, with_kwargs=True))
            self._handles.append(self.model.get_submodule(last).register_forward_hook(after, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        self.spans = []
