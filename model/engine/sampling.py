"""Choosing the next thinker token or talker code from logits, as transformers' generate does.

The processors are transformers' own, applied in generate's order (penalties and suppression, then
temperature, top-k, top-p), so greedy decoding reproduces generate's choices exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from model import constants as C


class EndsSuppressed:
    """transformers' `MinNewTokensLengthLogitsProcessor`, value for value: the `eos` ids get -inf until
    `count` tokens follow the first `prompt` ids. Its ids are a tensor made once, where transformers' builds a
    mask over the whole vocabulary at every step."""

    def __init__(self, prompt: int, count: int, eos: tuple[int, ...], device):
        self.prompt, self.count = prompt, count
        self.eos = torch.tensor(eos, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] - self.prompt < self.count:
            return scores.index_fill(-1, self.eos, -float("inf"))
        return scores


@dataclass
class Sampling:
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0


THINKER_DEFAULT = Sampling()  # the checkpoint's generation config: greedy
TALKER_DEFAULT = Sampling(
    greedy=False,
    temperature=C.TALKER_TEMPERATURE,
    top_k=C.TALKER_TOP_K,
    top_p=C.TALKER_TOP_P,
    repetition_penalty=C.TALKER_REPETITION_PENALTY,
)


class TokenChooser:
    """Applies one stream's processors and picks a token. `history` holds the ids the repetition penalty
    sees: transformers penalises every id of the sequence, prompt included. `eos` ids are suppressed until
    `min_new_tokens` have been chosen (transformers' `min_new_tokens`)."""

    def __init__(
        self,
        sampling: Sampling,
        suppress: tuple[int, ...] = (),
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        min_new_tokens: int = 0,
        eos: tuple[int, ...] = (),
        margins: bool = False,
    ):
        self.sampling = sampling
        self.record_margins = margins
        self.generator = generator
        self.device = device
        processors = LogitsProcessorList()
        if sampling.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
        # transformers' processor counts new tokens from a prompt length fixed when it is built; here that is
        # the history the first choice sees, so it is built then, at generate's place in the order.
        self._min_new = (len(processors), min_new_tokens, eos) if min_new_tokens > 0 and eos else None
        if suppress:
            processors.append(SuppressTokensLogitsProcessor(list(suppress), device=str(device)))
        if not sampling.greedy:
            if sampling.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                processors.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(sampling.top_p))
        self.processors = processors
        # Top-1 minus top-2 processed score of each greedy choice: where it is tiny, float error between two
        # equivalent computations may flip the choice, so tests compare choices only above a tolerance
        # (recorded when `margins` is on).
        self.margins: list[float] = []

    def choose(self, logits: torch.Tensor, history: torch.Tensor) -> int:
        """logits: (1, vocab) float; history: (1, n) long ids on the same device."""
        if self._min_new is not None:
            index, count, eos = self._min_new
            self._min_new = None
            processor = EndsSuppressed(history.shape[-1], count, eos, self.device)
            self.processors.insert(index, processor)
        scores = self.processors(history, logits.float())
        if self.sampling.greedy:
            if self.record_margins:
                top2 = scores.topk(2, dim=-1).values[0]
                self.margins.append(float(top2[0] - top2[1]))
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def residual_sampling(talker: Sampling) -> Sampling:
    """How Qwen3-Omni's code predictor chooses a frame's residual codes: greedy when the talker is, else
    transformers' hard-coded top-k 50 and top-p 0.8 at temperature 1 (generate mirrors only the talker's
    do_sample onto it)."""
    return talker if talker.greedy else Sampling(greedy=False, top_k=50, top_p=0.8)
