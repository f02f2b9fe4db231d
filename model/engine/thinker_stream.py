"""The thinker's side of a conversation: one KV cache, its rope position, and what the talker reads.

Input arrives as segments (a turn's prompt, or a block of live input) with their embeddings and 3-D rope
ids; each is prefilled onto the cache. Decoding feeds one token at a time. Every prefill or step also leaves
an entry of "talker states", what transformers hands the talker for those positions (the family's
talker_inputs.py: for Qwen2.5-Omni every position, for Qwen3-Omni user turns only, so an entry may be empty).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass, field

import torch

from model import constants as C
from model.engine.batched_step import DecodeStep
from model.engine.family import TalkerInputs
from model.engine.kv_cache import GrowingKV, StaticKV
from model.engine.steps import run_to_end

VISION_TOKEN_IDS = (C.IMAGE_TOKEN_ID, C.VIDEO_TOKEN_ID)  # both families'


@dataclass
class Segment:
    """Prompt tokens ready for the thinker: ids, their input embeddings and their rope ids."""

    ids: torch.Tensor  # (1, n) long
    embeds: torch.Tensor  # (1, n, hidden)
    position_ids: torch.Tensor  # (3, 1, n), absolute (already offset to follow the cache)
    # Qwen3-Omni's vision features for its first decoder layers ("deepstack"), at the segment's image and video
    # positions in order: one (positions, hidden) tensor per layer. None: none, or a model without them.
    deepstack: list[torch.Tensor] | None = None
    # A whole turn's media, as its rope ids were made from them (encode.rope_ids' arguments); None elsewhere.
    media: dict | None = None

    @property
    def visual(self) -> torch.Tensor:
        """Which positions the deepstack features go to, (n,) bool."""
        return torch.isin(self.ids[0], torch.tensor(VISION_TOKEN_IDS, device=self.ids.device))


def _deepstack(segments: tuple[Segment, ...]) -> dict:
    """The language model's deepstack arguments for segments prefilled together (none if none has them)."""
    stacks = [segment.deepstack for segment in segments if segment.deepstack is not None]
    if not stacks:
        return {}
    mask = torch.cat([segment.visual for segment in segments])[None]
    layers = [torch.cat(layer, dim=0) for layer in zip(*stacks)]
    return {"visual_pos_masks": mask, "deepstack_visual_embeds": layers}


def _piece_of(vision: dict, start: int, end: int) -> dict:
    """The deepstack arguments for positions start:end of a prefill (none if that piece has no vision)."""
    if not vision:
        return {}
    mask = vision["visual_pos_masks"]
    if not bool(mask[:, start:end].any()):
        return {}
    first, last = int(mask[:, :start].sum()), int(mask[:, :end].sum())
    return {"visual_pos_masks": mask[:, start:end], "deepstack_visual_embeds": [layer[first:last] for layer in vision["deepstack_visual_embeds"]]}


@dataclass
class ThinkerStream:
    thinker: object  # Qwen2_5OmniThinkerForConditionalGeneration or Qwen3OmniMoeThinkerForConditionalGeneration
    cache: GrowingKV | StaticKV = None
    talker_inputs: TalkerInputs | None = None  # None: no talker states kept
    ids: list[int] = field(default_factory=list)  # every token in the cache, in order
    next_position: int = 0  # rope id of the next text token: one past the largest id so far
    talker_states: list[torch.Tensor] = field(default_factory=list)  # (1, n_i, talker input) per prefill/step
    state_positions: list[torch.Tensor] = field(default_factory=list)  # their talker rope ids, (3, 1, n_i)
    entry_tokens: list[int] = field(default_factory=list)  # thinker tokens per entry (1: a decoded token)

    def __post_init__(self):
        if self.cache is None:
            self.cache = GrowingKV(self.thinker.config.text_config)

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def device(self) -> torch.device:
        return self.thinker.lm_head.weight.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.thinker.get_input_embeddings()(ids)

    def _forward(self, embeds: torch.Tensor, position_ids: torch.Tensor, **vision) -> torch.Tensor:
        return self.cache.forward(self.thinker.model.language_model, embeds, position_ids, **vision)

    def prefill(self, *segments: Segment) -> torch.Tensor:
        """Adds segments to the cache in one forward pass; returns the logits after the last token, (1, vocab).
        Each segment keeps its own entry of talker states, so a `mark` between two of them is one to rewind to."""
        return run_to_end(self.prefill_pieces(*segments))

    @torch.no_grad()
    def prefill_pieces(self, *segments: Segment, piece: int | None = None) -> Generator[None, None, torch.Tensor]:
        """`prefill` in forward passes of at most `piece` positions, yielding between them, so that the model
        worker runs other conversations' steps meanwhile (a long upload never starves their speech). Nothing
        is added until the last piece has run: closed early, the cache is as before. Each piece attends to
        the ones before it through the cache, so the result is one pass's up to float rounding."""
        embeds = torch.cat([segment.embeds for segment in segments], dim=1)
        positions = torch.cat([segment.position_ids for segment in segments], dim=-1)
        vision = _deepstack(segments)
        total = embeds.shape[1]
        piece = piece or total
        before = self.length
        # Entered around each piece: what the talker needs (Qwen3-Omni: a layer's states) gathers over them.
        capture = self.talker_inputs.prefilling() if self.talker_inputs is not None else contextlib.nullcontext()
        hidden = []
        try:
            for start in range(0, total, piece):
                if start:
                    yield
                end = min(start + piece, total)
                with capture:
                    hidden.append(self._forward(embeds[:, start:end], positions[..., start:end], **_piece_of(vision, start, end)))
        except BaseException:
            self.cache.keep(before)
            raise
        hidden = torch.cat(hidden, dim=1)
        start = 0
        for segment in segments:
            count = segment.ids.shape[1]
            self._add_entry(count, segment, hidden, slice(start, start + count))
            self.ids.extend(segment.ids[0].tolist())
            self.next_position = int(segment.position_ids.max()) + 1
            start += count
        return self.thinker.lm_head(hidden[:, -1])

    def _add_entry(self, count: int, segment: Segment | None = None, hidden=None, span=None, reply=None, position=None) -> None:
        """The talker states of a prefilled segment (`hidden[:, span]` its last hidden states), or of a decoded
        token (its `reply` state at `position`)."""
        self.entry_tokens.append(count)
        reads = self.talker_inputs
        if reads is None:  # a model without a talker
            states = positions = None
        elif segment is not None:
            states, positions = reads.prompt_states(segment, hidden, span, self.ids, self._talker_next())
        else:
            states, positions = reads.answer_states(reply, position)
        self.talker_states.append(states)
        self.state_positions.append(positions)

    def _talker_next(self) -> int:
        """One past the talker rope ids of the states so far."""
        for positions in reversed(self.state_positions):
            if positions is not None and positions.shape[-1]:
                return int(positions.max()) + 1
        return 0

    def mark_after(self, *segments: Segment) -> tuple[int, int, int]:
        """The `mark` there will be once `segments` are prefilled (before they are; none: the mark now)."""
        if not segments:
            return self.mark()
        length = self.length + sum(segment.ids.shape[1] for segment in segments)
        return length, len(self.entry_tokens) + len(segments), int(segments[-1].position_ids.max()) + 1

    @torch.no_grad()
    def step(self, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feeds one generated token; returns (logits (1, vocab), its talker state (1, 1, hidden))."""
        request = self.step_request(token)
        request.run()
        return request.result

    @torch.no_grad()
    def step_request(self, token: int) -> DecodeStep:
        """`step` as a request for the model thread's scheduler (batched_step.py): nothing changes until it
        runs; its result is `step`'s."""
        ids = torch.tensor([[token]], device=self.device)
        embeds = self.embed(ids)
        position = torch.full((3, 1, 1), self.next_position, dtype=torch.long, device=self.device)

        def finish(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            state = self.talker_inputs.reply(embeds, hidden) if self.talker_inputs is not None else None
            self._add_entry(1, reply=state, position=position)
            self.ids.append(token)
            self.next_position += 1
            return self.thinker.lm_head(hidden[:, -1]), state

        return DecodeStep(self.thinker.model.language_model, self.cache, embeds, position, finish)

    def mark(self) -> tuple[int, int, int]:
        """Where the cache stands now, for `rewind`."""
        return self.length, len(self.entry_tokens), self.next_position

    def rewind(self, mark: tuple[int, int, int]) -> None:
        """Back to `mark`: everything prefilled or fed since is forgotten (a live window that must be redone)."""
        length, entries, next_position = mark
        self.cache.keep(length)
        del self.ids[length:], self.entry_tokens[entries:], self.talker_states[entries:], self.state_positions[entries:]
        self.next_position = next_position

    def forget_last(self, count: int) -> None:
        """Drops the last `count` decoded tokens (one `step` each) from the cache and the talker states."""
        if any(tokens != 1 for tokens in self.entry_tokens[-count:]):
            raise ValueError("forget_last drops decoded tokens only, not prefilled segments")
        self.rewind((self.length - count, len(self.entry_tokens) - count, self.next_position - count))

    def text_segment(self, ids: list[int]) -> Segment:
        """Plain text tokens that follow the cache (all three rope ids advance together)."""
        tensor = torch.tensor([ids], device=self.device)
        positions = torch.arange(self.next_position, self.next_position + len(ids), device=self.device)
        return Segment(tensor, self.embed(tensor), positions.view(1, 1, -1).expand(3, 1, -1))
