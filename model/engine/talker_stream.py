"""The talker's side of an answer: its KV cache over the thinker's states, one step per code (or frame).

transformers runs the talker after the thinker has finished. Here it runs one token behind it: its prompt
(the thinker states of everything prefilled so far) can be fed as it arrives, its first forward ends with the
voice's inputs and the first reply token's state, and each later step takes the previous code's embedding
plus the next reply state (thinker token k+1 for step k; then text EOS, then text PAD).

`TalkerStream` keeps the cache and the answer's bookkeeping every family shares; a family's subclass
(model/families/<family>/talker_stream.py) says how its inputs are projected, what an answer's first
forward reads, what one step's code stands for and what the repetition penalty sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model.engine.batched_step import DecodeStep, Step
from model.engine.kv_cache import GrowingKV, StaticKV


@dataclass
class TalkerStream:
    talker: object  # the family's talker model (transformers' class)
    cache: GrowingKV | StaticKV = None
    length: int = 0  # positions in the cache
    next_position: int = 0  # rope id of the next text position
    prompt_length: int = 0  # positions that belong to the conversation (kept across answers)
    prompt_next_position: int = 0
    codes: list[int] = field(default_factory=list)  # this answer's codes so far
    eos_codes: tuple[int, ...] = ()  # the codes that end the speech
    suppressed: tuple[int, ...] = ()  # codes never chosen
    last_hidden: torch.Tensor | None = field(default=None, repr=False)  # the last position's, from the last forward

    def __post_init__(self):
        if self.cache is None:
            self.cache = GrowingKV(self.talker.config)

    @property
    def device(self) -> torch.device:
        return self.talker.codec_head.weight.device

    def codec_embed(self, code: int) -> torch.Tensor:
        return self.talker.get_input_embeddings()(torch.tensor([[code]], device=self.device))

    def _between_answers(self, doing: str) -> None:
        if self.length != self.prompt_length:
            raise RuntimeError(f"the talker is mid-answer; end the answer before {doing}")

    def _forward(self, inputs: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.cache.forward(self.talker.model, self.project(inputs), position_ids)
        return self._read(hidden)

    def _read(self, hidden: torch.Tensor) -> torch.Tensor:
        """After a forward over new positions (`hidden`, their last hidden states): the next code's logits."""
        self.length += hidden.shape[1]
        self.last_hidden = hidden[:, -1:]
        return self.talker.codec_head(hidden[:, -1]).float()

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        """The thinker states and reply states, in the talker's width."""
        raise NotImplementedError

    def code_input(self, code) -> torch.Tensor:
        return self.codec_embed(code)

    @torch.no_grad()
    def feed_prompt(self, states: torch.Tensor, position_ids: torch.Tensor) -> None:
        """Prefills conversation positions (thinker states, (1, n, hidden)) with their talker rope ids."""
        self._between_answers("feeding more prompt")
        self._forward(states, position_ids)
        self.prompt_length = self.length
        self.next_position = self.prompt_next_position = int(position_ids.max()) + 1

    @torch.no_grad()
    def start(self, voice, first_reply: torch.Tensor, prompt: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The answer's first talker forward: the voice's inputs and the first reply state (`answer_inputs`),
        after `prompt` (conversation states not fed yet, as `feed_prompt` takes them) in the same forward pass,
        as transformers prefills the talker. Returns the logits of the first code."""
        inputs = self.answer_inputs(voice, first_reply)
        count = inputs.shape[1]
        first = self.next_position if prompt is None else int(prompt[1].max()) + 1
        positions = torch.arange(first, first + count, device=self.device).view(1, 1, -1).expand(3, 1, -1)
        if prompt is not None:
            self._between_answers("feeding more prompt")
            inputs = torch.cat([prompt[0], inputs], dim=1)
            positions = torch.cat([prompt[1], positions], dim=-1)
        logits = self._forward(inputs, positions)
        if prompt is not None:
            self.prompt_length, self.prompt_next_position = self.length - count, first
        self.next_position = first + count
        return logits

    def answer_inputs(self, voice, first_reply: torch.Tensor) -> torch.Tensor:
        """The answer's own inputs in the talker's first forward: the voice's, then the first reply state's."""
        raise NotImplementedError

    def frame(self, code: int, residual=None) -> int:
        """What one chosen code stands for: itself (a family whose frames hold more codes adds them here)."""
        return code

    def frame_request(self, code: int, residual=None) -> Step | None:
        """`frame` as a request for the model thread's scheduler (batched_step.py), where a frame takes model
        work; None: it takes none (`frame(code)` is the code)."""
        return None

    @torch.no_grad()
    def step(self, code: int, reply: torch.Tensor) -> torch.Tensor:
        """Feeds the last code with the next reply state; returns the next code's logits."""
        request = self.step_request(code, reply)
        request.run()
        return request.result

    @torch.no_grad()
    def step_request(self, code: int, reply: torch.Tensor) -> DecodeStep:
        """`step` as a request for the model thread's scheduler (batched_step.py): nothing changes until it runs."""
        position = torch.full((3, 1, 1), self.next_position, dtype=torch.long, device=self.device)

        def finish(hidden: torch.Tensor) -> torch.Tensor:
            self.codes.append(code)
            self.next_position += 1
            return self._read(hidden)

        return DecodeStep(self.talker.model, self.cache, self.project(self.code_input(code) + reply), position, finish)

    def mark(self) -> tuple[int, int]:
        """Where the conversation's prompt stands now (between answers), for `rewind`."""
        return self.prompt_length, self.prompt_next_position

    def rewind(self, mark: tuple[int, int]) -> None:
        """Back to `mark`: the prompt fed since is forgotten."""
        self._between_answers("rewinding its prompt")
        self.cache.keep(mark[0])
        self.length = self.prompt_length = mark[0]
        self.next_position = self.prompt_next_position = mark[1]

    def end_answer(self) -> None:
        """Drops the answer's positions: the next answer's talker sees the conversation, not this speech."""
        self.cache.keep(self.prompt_length)
        self.length = self.prompt_length
        self.next_position = self.prompt_next_position
        self.codes = []

    def penalty_history(self) -> torch.Tensor:
        """The ids transformers' repetition penalty sees for the talker."""
        raise NotImplementedError
