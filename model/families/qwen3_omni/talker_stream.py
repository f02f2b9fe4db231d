"""Qwen3-Omni's talker: `TalkerStream`'s cache and answer bookkeeping, with Qwen3-Omni's inputs and its code
predictor.

Each 80 ms frame has 16 codes. The talker chooses code 0 (a 3072-code vocabulary whose top 1024 ids are
control codes, never chosen but EOS); the code predictor, a 5-layer decoder with a fresh cache per frame,
then reads the talker's last hidden state and code 0 and chooses the 15 residual codes one by one, each with
its own head. The next talker step reads the sum of the frame's 16 code embeddings plus the next reply state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from model.engine.batched_step import Step
from model.engine.talker_stream import TalkerStream
from model.families.qwen3_omni.talker_inputs import Qwen3TalkerInputs

CONTROL_CODES = 1024  # the top of the talker's vocabulary: think/nothink, speakers, pad, BOS, EOS


@dataclass
class Qwen3TalkerStream(TalkerStream):
    inputs: Qwen3TalkerInputs = None
    head: torch.Tensor | None = field(default=None, repr=False)  # `<|im_start|>assistant\n` projected, made once

    def __post_init__(self):
        super().__post_init__()
        config = self.inputs.config.talker_config
        self.config = config
        vocab = config.text_config.vocab_size
        self.eos_codes = (config.codec_eos_token_id,)
        self.suppressed = tuple(i for i in range(vocab - CONTROL_CODES, vocab) if i != config.codec_eos_token_id)

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs  # the talker inputs are already in the talker's width

    def answer_inputs(self, voice: int, first_reply: torch.Tensor) -> torch.Tensor:
        """transformers' assistant part: the projected `<|im_start|>assistant\\n` with no code, four TTS pads
        with nothink / think BOS / think EOS / the speaker's code, TTS BOS with codec pad, then the first reply
        token with codec BOS."""
        config, inputs = self.config, self.inputs
        if self.head is None:
            self.head = inputs.assistant_head()
        pad, bos = inputs.tts(inputs.config.tts_pad_token_id), inputs.tts(inputs.config.tts_bos_token_id)
        codes = [config.codec_nothink_id, config.codec_think_bos_id, config.codec_think_eos_id, voice, config.codec_pad_id]
        texts = torch.cat([pad, pad, pad, pad, bos], dim=1)
        code_embeds = self.talker.get_input_embeddings()(torch.tensor([codes], device=self.device))
        return torch.cat([self.head, texts + code_embeds, first_reply + self.codec_embed(config.codec_bos_id)], dim=1)

    def frame(self, code: int, residual: Callable[[torch.Tensor], int]) -> list[int]:
        """Code 0 and the 15 residual codes the code predictor chooses after it (`residual`: logits -> code)."""
        request = self.frame_request(code, residual)
        request.run()
        return request.result

    def frame_request(self, code: int, residual: Callable[[torch.Tensor], int]) -> FrameStep:
        return FrameStep(self, code, residual)

    def code_input(self, frame: list[int]) -> torch.Tensor:
        """The sum of the frame's code embeddings: code 0's in the talker's table, each residual in its own."""
        embeddings = self.talker.code_predictor.model.get_input_embeddings()
        residuals = [embeddings[group](torch.tensor([[code]], device=self.device)) for group, code in enumerate(frame[1:])]
        return torch.cat([self.codec_embed(frame[0]), *residuals], dim=1).sum(1, keepdim=True)  # transformers' order

    def penalty_history(self) -> torch.Tensor:
        """transformers' talker generate starts from embeddings alone: its repetition penalty sees the chosen
        codes 0 only."""
        return torch.tensor([[frame[0] for frame in self.codes]], dtype=torch.long, device=self.device)


@dataclass(eq=False)
class FrameStep(Step):
    """One frame's residual codes, asked for by an answer: the code predictor's 15 passes, for this answer
    alone or for several answers' frames at once (every frame's passes have the same shapes: a fresh cache,
    two positions, then one per code), each row choosing its codes with its own answer's `residual`."""

    stream: Qwen3TalkerStream
    code: int
    residual: Callable[[torch.Tensor], int]
    result: list[int] | None = None
    ran: bool = False

    def run(self) -> None:
        FrameStep.run_together([self])

    @classmethod
    @torch.no_grad()
    def run_together(cls, steps: list[FrameStep]) -> None:
        groups: dict[int, list[FrameStep]] = {}
        for step in steps:
            groups.setdefault(id(step.stream.talker.code_predictor), []).append(step)
        for group in groups.values():
            _predict(group)


def _predict(steps: list[FrameStep]) -> None:
    first = steps[0].stream
    predictor, device = first.talker.code_predictor, first.device
    embeddings = predictor.model.get_input_embeddings()
    cache = DynamicCache(config=predictor.config)
    embeds = torch.cat([torch.cat([s.stream.last_hidden, s.stream.codec_embed(s.code)], dim=1) for s in steps])
    frames = [[step.code] for step in steps]
    for group, head in enumerate(predictor.lm_head):
        hidden = predictor.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True).last_hidden_state
        logits = head(hidden[:, -1]).float()
        for row, (step, frame) in enumerate(zip(steps, frames)):
            frame.append(step.residual(logits[row : row + 1]))
        embeds = embeddings[group](torch.tensor([[frame[-1]] for frame in frames], device=device))
    for step, frame in zip(steps, frames):
        step.result, step.ran = frame, True
