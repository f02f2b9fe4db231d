"""Qwen2.5-Omni's talker: `TalkerStream`'s cache and answer bookkeeping, one code per step.

Its inputs are the thinker's states (embedding plus hidden state) projected to the talker's width; an
answer's first forward reads the speaker's BOS embedding with codec pad, then the first reply state with
codec BOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import constants as C
from model.engine.talker_stream import TalkerStream


@dataclass
class Qwen25TalkerStream(TalkerStream):
    eos_codes: tuple[int, ...] = C.TALKER_EOS_CODES  # transformers' default talker_eos_token_id
    suppressed: tuple[int, ...] = (C.CODEC_BOS_ID,)

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.talker.thinker_to_talker_proj(inputs)

    def answer_inputs(self, voice: torch.Tensor, first_reply: torch.Tensor) -> torch.Tensor:
        """Speaker BOS + codec pad, first reply state + codec BOS (`voice`: the speaker's BOS embedding)."""
        return torch.cat(
            [voice + self.codec_embed(C.CODEC_PAD_ID), first_reply + self.codec_embed(C.CODEC_BOS_ID)], dim=1
        )

    def penalty_history(self) -> torch.Tensor:
        """The ids transformers' repetition penalty sees for the talker: the prompt's codec mask, pad and BOS
        (only their set matters) and the codes so far."""
        ids = [C.CODEC_MASK_ID, C.CODEC_PAD_ID, C.CODEC_BOS_ID, *self.codes]
        return torch.tensor([ids], device=self.device)
