"""What Qwen3-Omni's talker reads from the thinker: its prompt states, the reply states it speaks from, and
the markers that end a reply.

Qwen3-Omni's talker reads the user turns only (not the system prompt, not earlier answers): text as the
projected input embedding, audio, image and video positions as the projected hidden state of thinker layer
`accept_hidden_layer`; its positions count its own sequence. Reply tokens are projected input embeddings, so
the talker can run one token behind the thinker.
"""

from __future__ import annotations

import threading
from itertools import pairwise
from typing import Self

import torch

from model import constants as C


def _last_index(ids: list[int], token: int) -> int:
    for index in range(len(ids) - 1, -1, -1):
        if ids[index] == token:
            return index
    return -1


class LayerCapture:
    """The output of one decoder layer during the forward passes run inside `with capture:` on this thread,
    gathered along the sequence over every time it is entered (a prefill in pieces enters it once a piece).
    The hook exists only meanwhile, so the decode steps (compiled on a GPU) and the other conversations'
    steps run between two pieces never see it, and it records only its own thread's forwards: conversations
    on other threads may run the same layer at the same time."""

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer
        self.outputs: list[torch.Tensor] = []

    @property
    def output(self) -> torch.Tensor | None:
        return torch.cat(self.outputs, dim=1) if self.outputs else None

    def __enter__(self) -> Self:
        owner = threading.get_ident()

        def keep(module, args, output) -> None:
            if threading.get_ident() == owner:
                self.outputs.append(output[0] if isinstance(output, tuple) else output)

        self._hook = self.layer.register_forward_hook(keep)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()


class Qwen3TalkerInputs:
    def __init__(self, model, media_ids: tuple[int, ...]):
        self.thinker, self.talker = model.thinker, model.talker
        self.config = model.config
        self.media_ids = media_ids
        layer = model.config.talker_config.accept_hidden_layer  # hidden_states[k] is decoder layer k-1's output
        self.layer = self.thinker.model.language_model.layers[layer - 1]
        self._captured: LayerCapture | None = None
        # The user turn being read: (thinker index of its <|im_start|>, thinker-to-talker id shift, None for
        # plain sequential ids).
        self._turn: tuple[int, int | None] | None = None
        thinker_config = model.config.thinker_config
        self.vision_start, self.audio_start = thinker_config.vision_start_token_id, thinker_config.audio_start_token_id

    def embed(self, ids: list[int]) -> torch.Tensor:
        device = self.thinker.lm_head.weight.device
        return self.thinker.get_input_embeddings()(torch.tensor([ids], device=device))

    def prefilling(self) -> LayerCapture:
        """Around each forward pass of a thinker prefill: its layer-`accept_hidden_layer` states, which the
        talker reads at media (`prompt_states`, once the prefill is done)."""
        self._captured = LayerCapture(self.layer)
        return self._captured

    def _user_mask(self, ids: list[int], before: list[int]) -> list[bool]:
        """Which of `ids` lie in user turns, given the ids already in the cache: a position belongs to the
        turn its last <|im_start|> opened (an <|im_start|> to the turn it opens), as transformers' generate
        assigns them."""
        role, back = None, _last_index(before, C.IM_START_ID)
        if back >= 0:
            role = before[back + 1] if back + 1 < len(before) else (ids[0] if ids else None)
        mask = []
        for index, token in enumerate(ids):
            if token == C.IM_START_ID and index + 1 < len(ids):
                role = ids[index + 1]
            mask.append(role == self.config.user_token_id)
        return mask

    def prompt_states(self, segment, hidden: torch.Tensor, span: slice, before: list[int], next_position: int):
        """The talker's states for the user positions of a prefilled segment (`span` of the forward pass), at
        the talker's own positions; none for system and assistant positions.

        transformers gives the talker the TMRoPE ids of its own sequence (the user turns, one after another),
        made by the thinker's rule but never told that a video carries its sound (generate passes the talker
        the grids only): a whole turn's are made that way here. A live turn's windows come without the
        turn's media totals: its ids are the thinker's shifted (both count from the turn's <|im_start|> by the
        same rule), or plain sequential ones for a camera turn with sound, which the rule without the flag
        reads as one audio block (checked against transformers for whole turns of each kind)."""
        ids = segment.ids
        listed = ids[0].tolist()
        keep = torch.tensor(self._user_mask(listed, before), dtype=torch.bool, device=ids.device)
        media = torch.isin(ids[0], torch.tensor(self.media_ids, device=ids.device))
        text_states = self.talker.text_projection(segment.embeds[0][keep & ~media])
        states = torch.empty((int(keep.sum()), text_states.shape[-1]), dtype=text_states.dtype, device=text_states.device)
        kept_media = media[keep]
        states[~kept_media] = text_states
        if bool(kept_media.any()):
            layer_hidden = self._captured.output[0, span]
            states[kept_media] = self.talker.hidden_projection(layer_hidden[keep & media])
        return states.unsqueeze(0), self._positions(segment, listed, keep, before, next_position)

    def _positions(self, segment, listed: list[int], keep: torch.Tensor, before: list[int], next_position: int) -> torch.Tensor:
        kept = keep.nonzero().flatten().tolist()
        if not kept:
            return segment.position_ids[:, :, :0]
        if listed[kept[0]] == C.IM_START_ID:  # a user turn starts here
            interleaved = any(a == self.vision_start and b == self.audio_start for a, b in pairwise(listed))
            shift = None if interleaved else int(segment.position_ids[0, 0, kept[0]]) - next_position
            self._turn = (len(before) + kept[0], shift)
            if segment.media is not None:
                ids = segment.ids[:, keep]
                rope, _ = self.thinker.model.get_rope_index(
                    ids,
                    segment.media["image_grid"],
                    segment.media["video_grid"],
                    torch.ones_like(ids),
                    False,
                    segment.media["audio_frames"],
                    segment.media["seconds_per_grid"],
                )
                return rope.to(segment.position_ids.dtype) + next_position
        elif not (self._turn and self._turn[0] == _last_index(before, C.IM_START_ID)):
            raise RuntimeError("a user turn's positions continue a turn whose start is not in the cache")
        shift = self._turn[1]
        if shift is None:
            sequential = torch.arange(next_position, next_position + len(kept), device=keep.device)
            return sequential.view(1, 1, -1).expand(3, 1, -1)
        return segment.position_ids[:, :, keep] - shift

    def reply(self, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.talker.text_projection(embeds)

    def answer_states(self, reply: torch.Tensor, position: torch.Tensor):
        """A decoded token's entry: empty, later answers' talkers read the user turns only."""
        return reply[:, :0], position[..., :0]

    def voice(self, voice: dict) -> int:
        """The talker's input for a voice: its speaker code."""
        return voice["speaker_id"]

    def tts(self, token_id: int) -> torch.Tensor:
        return self.talker.text_projection(self.embed([token_id]))

    def assistant_head(self) -> torch.Tensor:
        """`<|im_start|>assistant\\n`, projected: the first three positions of every answer's talker input."""
        return self.talker.text_projection(self.embed([C.IM_START_ID, self.config.assistant_token_id, C.NEWLINE_ID]))

    def reply_end(self) -> torch.Tensor:
        return self.tts(self.config.tts_eos_token_id)

    def reply_pad(self) -> torch.Tensor:
        return self.tts(self.config.tts_pad_token_id)
