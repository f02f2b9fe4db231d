"""What Qwen2.5-Omni's talker reads from the thinker: its prompt states, the reply states it speaks from, and
the markers that end a reply.

Qwen2.5-Omni's talker reads every prompt position (the thinker's input embedding, zeroed at media, plus its
last hidden state) at the thinker's own rope ids, and each reply token as embedding plus hidden state.
"""

from __future__ import annotations

import contextlib

import torch

from model import constants as C


class Qwen25TalkerInputs:
    def __init__(self, model, media_ids: tuple[int, ...]):
        self.thinker = model.thinker
        self.media_ids = media_ids

    def embed(self, ids: list[int]) -> torch.Tensor:
        device = self.thinker.lm_head.weight.device
        return self.thinker.get_input_embeddings()(torch.tensor([ids], device=device))

    def prefilling(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the last hidden states are all it reads

    def prompt_states(self, segment, hidden: torch.Tensor, span: slice, before: list[int], next_position: int):
        """The talker's states for a prefilled segment (its last hidden states are `hidden[:, span]`) and their
        rope ids: every position, at the thinker's ids."""
        media = torch.isin(segment.ids, torch.tensor(self.media_ids, device=segment.ids.device))
        return segment.embeds.masked_fill(media.unsqueeze(-1), 0.0) + hidden[:, span], segment.position_ids

    def reply(self, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return embeds + hidden

    def answer_states(self, reply: torch.Tensor, position: torch.Tensor):
        """A decoded token's entry: later answers' talkers read the conversation's answers too."""
        return reply, position

    def voice(self, voice: dict) -> torch.Tensor:
        """The talker's first input for a voice: its BOS text token's embedding."""
        return self.embed([voice["bos_token"]])

    def reply_end(self) -> torch.Tensor:
        return self.embed([C.TALKER_TEXT_EOS_ID])

    def reply_pad(self) -> torch.Tensor:
        return self.embed([C.TALKER_TEXT_PAD_ID])
