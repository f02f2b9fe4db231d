"""The one path from prompt pieces to what the thinker reads: ids, input embeddings, TMRoPE ids.

Whole turns and live windows both come through here. The processor (model/families/<family>/processing.py) turns media into
features and tells how many placeholder tokens each takes; `media_embeddings` runs the audio and vision
encoders and puts their outputs at those placeholders; `rope_ids` asks transformers' `get_rope_index` for
the 3-D position ids of a piece of prompt that starts at 0.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from model import constants as C
from model.engine.live_input import SAMPLES_PER_WINDOW
from model.engine.steps import run_to_end
from model.engine.thinker_stream import Segment
from model.inputs.conversation import Audio, Conversation, Part, Turn

# Vision patches encoded per step of a whole turn (`encoding_whole_turn`): a video is cut between frame pairs,
# which the vision encoders attend within, so on a GPU one step costs about one round of the others' decoding.
VISION_PIECE = 8192


@dataclass(frozen=True)
class LivePrompt:
    """A live turn's prompt so far: its ids, and the media totals that the TMRoPE ids of what follows
    depend on."""

    ids: tuple[int, ...] = ()
    video_grids: int = 0  # frame pairs
    audio_frames: int = 0  # mel frames
    grid_hw: tuple[int, int] | None = None


@dataclass(frozen=True)
class TurnMedia:
    """A whole user turn's media through the processor (`turn_media`). Resizing a long video's frames takes
    as long as a GPU's encoders and prefill together, so the app makes these on the thread that received the
    upload, not on the model's."""

    inputs: object  # the processor's `media_inputs` (MediaInputs of model/families/processing_parts.py)
    use_audio_in_video: bool  # as asked
    interleave: bool  # as done: only when every video has its sound


def turn_media(processor, parts: list[Part], use_audio_in_video: bool = True) -> TurnMedia:
    """`parts`' media as the model reads them; no model involved (any thread)."""
    _, media = Conversation("", [Turn("user", list(parts))]).model_inputs()
    interleave = use_audio_in_video and bool(media["videos"]) and all(v.audio is not None for v in media["videos"])
    if media["videos"] and not interleave:
        # model_inputs put each video's sound after it as a separate audio part only when it decided not
        # to interleave; keep the two decisions the same.
        media["audio"] = [p.samples for p in parts if isinstance(p, Audio)] + [
            v.audio for v in media["videos"] if v.audio is not None
        ]
    inputs = processor.media_inputs(
        audio=media["audio"] or None,
        images=media["images"] or None,
        videos=[clip.frames for clip in media["videos"]] or None,
        video_fps=[clip.fps for clip in media["videos"]] or None,
    )
    return TurnMedia(inputs, use_audio_in_video, interleave)


def _vision_pieces(pixels: torch.Tensor, grids: torch.Tensor, rows: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(pixels, grids) in pieces of about `rows` patches, cut between frame pairs (None: one piece)."""
    if rows is None:
        yield pixels, grids
        return
    start = 0
    for t, h, w in grids.tolist():
        per_pair = h * w
        pairs = max(1, rows // per_pair)
        for first in range(0, t, pairs):
            count = min(pairs, t - first)
            yield pixels[start + first * per_pair : start + (first + count) * per_pair], grids.new_tensor([[count, h, w]])
        start += t * per_pair


class PromptEncoder:
    def __init__(self, thinker, processor):
        self.thinker = thinker  # Qwen2_5OmniThinkerForConditionalGeneration or Qwen3-Omni's thinker
        self.processor = processor
        self.audio_id, self.image_id, self.video_id = processor.audio_token_id, processor.image_token_id, processor.video_token_id

    @property
    def device(self) -> torch.device:
        return self.thinker.lm_head.weight.device

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.thinker.get_input_embeddings()(ids)

    def media_embeddings(self, ids: torch.Tensor, media: Mapping) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Input embeddings of `ids` (1, n), with the encoders' outputs at the media placeholders, and Qwen3-Omni's
        deepstack features of its images and videos in position order (None: none). `media` holds the
        processor's tensors (any of audio features, image pixels, video pixels, with their grids)."""
        return run_to_end(self.embedding_media(ids, media))

    @torch.no_grad()
    def embedding_media(
        self, ids: torch.Tensor, media: Mapping, rows: int | None = None
    ) -> Generator[None, None, tuple[torch.Tensor, list[torch.Tensor] | None]]:
        """`media_embeddings` in steps: the vision encoder over about `rows` patches a step (None: all at once)."""
        embeds = self.token_embeddings(ids)
        dtype, model = embeds.dtype, self.thinker.model
        if "input_features" in media:
            features = model.get_audio_features(
                media["input_features"].to(self.device, dtype), media["feature_attention_mask"].to(self.device)
            ).last_hidden_state
            embeds = embeds.masked_scatter((ids == self.audio_id).unsqueeze(-1), features.to(dtype))
        stacks = {}  # token id -> its deepstack layers
        for token, pixels, grid, encode in (
            (self.image_id, "pixel_values", "image_grid_thw", model.get_image_features),
            (self.video_id, "pixel_values_videos", "video_grid_thw", model.get_video_features),
        ):
            if pixels not in media:
                continue
            pooled, deepstack = [], []
            for index, (piece, piece_grid) in enumerate(_vision_pieces(media[pixels], media[grid], rows)):
                if index:
                    yield
                out = encode(piece.to(self.device, dtype), piece_grid.to(self.device))
                pooled += out.pooler_output
                if getattr(out, "deepstack_features", None) is not None:
                    deepstack.append([torch.cat(layer, dim=0) for layer in out.deepstack_features])
            embeds = embeds.masked_scatter((ids == token).unsqueeze(-1), torch.cat(pooled, dim=0).to(dtype))
            if deepstack:
                stacks[token] = [torch.cat(layer, dim=0).to(dtype) for layer in zip(*deepstack)]
        return embeds, _in_position_order(ids[0], stacks)

    def rope_ids(
        self,
        ids: torch.Tensor,
        *,
        image_grid: torch.Tensor | None = None,
        video_grid: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
        seconds_per_grid: torch.Tensor | None = None,
        use_audio_in_video: bool = False,
    ) -> torch.Tensor:
        """TMRoPE ids (3, 1, n) of a piece of prompt starting at 0; `audio_frames` is the mel frames of each
        audio (the processor's feature mask summed)."""
        positions, _ = self.thinker.model.get_rope_index(
            ids,
            image_grid,
            video_grid,
            torch.ones_like(ids),
            use_audio_in_video,
            audio_frames,
            seconds_per_grid,
        )
        return positions

    def encoding_whole_turn(
        self, text: str, parts: list[Part], use_audio_in_video: bool, offset: int, media: TurnMedia | None = None
    ) -> Generator[None, None, Segment]:
        """A user turn given whole (text, audio, images, videos) through the processor, placed at `offset`, in
        steps: the processor (unless `media` holds its work), then the encoders a piece at a time."""
        if media is None or media.use_audio_in_video != use_audio_in_video:
            media = turn_media(self.processor, parts, use_audio_in_video)
            if media.inputs.data or media.inputs.audio_data:
                yield
        inputs = self.processor(text=text, use_audio_in_video=media.interleave, media=media.inputs).to(self.device)
        ids = inputs["input_ids"]
        grids = {
            "image_grid": inputs.get("image_grid_thw"),
            "video_grid": inputs.get("video_grid_thw"),
            "audio_frames": inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None,
            "seconds_per_grid": inputs.get("video_second_per_grid"),
        }
        positions = self.rope_ids(ids, **grids, use_audio_in_video=media.interleave)
        embeds, deepstack = yield from self.embedding_media(ids, inputs, VISION_PIECE)
        return Segment(ids, embeds, positions + offset, deepstack, grids)

    # ------------------------------------------------------------ live windows

    def live_window(
        self,
        frames: list[np.ndarray],
        audio: np.ndarray,
        head: list[int],
        tail: list[int],
        so_far: LivePrompt,
        offset: int,
        audio_tokens: torch.Tensor | None = None,
    ) -> tuple[Segment, LivePrompt]:
        """One live window after `so_far`: `head` (the turn's opening, before its first window), then its video
        tokens (its frames, in pairs), then its audio tokens (its sound's log-mel, computed from this window
        alone). `tail` is the turn's closing, for the rope ids. `audio_tokens`: the audio encoder's output for
        this window, where the encoder attends across windows (Qwen3-Omni: `group_audio_tokens`); else the
        window's sound is encoded alone. Returns the segment and the prompt after it."""
        media: dict = {}
        if frames:
            if len(frames) % 2:  # an odd tail repeats its last frame, as the processor does
                frames = frames + frames[-1:]
            media.update(self.processor.video_processor([np.stack(frames)]))
        if len(audio):
            media.update(self.processor._audio_features([audio])[0])
        ids = head + self._placeholder_ids(media)
        grid = media.get("video_grid_thw")
        after = LivePrompt(
            so_far.ids + tuple(ids),
            so_far.video_grids + (int(grid[0, 0]) if grid is not None else 0),
            so_far.audio_frames + (int(media["feature_attention_mask"].sum()) if len(audio) else 0),
            tuple(grid[0, 1:].tolist()) if grid is not None else so_far.grid_hw,
        )
        return self._live_segment(ids, media, so_far, after, tail, offset, audio_tokens if len(audio) else None), after

    @torch.no_grad()
    def group_audio_tokens(self, pieces: list[np.ndarray]) -> list[torch.Tensor]:
        """The audio encoder's output for each window of a group, encoded together (each window's log-mel
        computed alone, as everywhere on the live path)."""
        features = [self.processor._audio_features([piece])[0]["input_features"][0] for piece in pieces]
        dtype = self.thinker.get_input_embeddings().weight.dtype
        joined = torch.cat(features, dim=-1)[None].to(self.device, dtype)
        mask = torch.ones((1, joined.shape[-1]), dtype=torch.long, device=self.device)
        tokens = self.thinker.model.get_audio_features(joined, mask).last_hidden_state
        counts = [self.processor.audio_tokens(f.shape[-1]) for f in features]
        return list(tokens.split(counts))

    def live_closing(self, tail: list[int], so_far: LivePrompt, offset: int) -> Segment:
        """The closing tokens after a live turn's last window."""
        return self._live_segment(tail, {}, so_far, so_far, [], offset)

    def _live_segment(
        self,
        new_ids: list[int],
        media: Mapping,
        before: LivePrompt,
        totals: LivePrompt,
        tail: list[int],
        offset: int,
        audio_tokens: torch.Tensor | None = None,
    ) -> Segment:
        """`new_ids` at their TMRoPE ids: transformers' get_rope_index over the turn so far (`totals`' media),
        closed by `tail`. Ids already placed do not depend on what follows, so every window gets the ids the
        whole turn gives it."""
        device = self.device
        ids = torch.tensor([[*before.ids, *new_ids, *tail]], device=device)
        video = bool(totals.video_grids)
        positions = self.rope_ids(
            ids,
            video_grid=torch.tensor([[totals.video_grids, *totals.grid_hw]], device=device) if video else None,
            audio_frames=torch.tensor([totals.audio_frames], device=device) if totals.audio_frames else None,
            seconds_per_grid=torch.tensor([self.processor.video_processor.temporal_patch_size / C.VIDEO_FPS], device=device)
            if video
            else None,
            use_audio_in_video=video and bool(totals.audio_frames),
        )
        new = torch.tensor([new_ids], dtype=torch.long, device=device)
        placed = positions[:, :, len(before.ids) : len(before.ids) + len(new_ids)] + offset
        if audio_tokens is None:
            embeds, deepstack = self.media_embeddings(new, media)
        else:
            video = {k: v for k, v in media.items() if k not in ("input_features", "feature_attention_mask")}
            embeds, deepstack = self.media_embeddings(new, video)
            embeds = embeds.masked_scatter((new == self.audio_id).unsqueeze(-1), audio_tokens.to(embeds.dtype))
        return Segment(new, embeds, placed, deepstack)

    def _placeholder_ids(self, media: Mapping) -> list[int]:
        """A live window's tokens in the processor's layout of a video with its sound, window by window (a
        window starts on a 2 s boundary, where both families' layouts start afresh): Qwen2.5-Omni's video
        tokens, then its audio tokens; Qwen3-Omni's each frame pair, then the audio tokens up to the next."""
        video = audio = 0
        if "video_grid_thw" in media:
            grid_t, grid_h, grid_w = media["video_grid_thw"][0].tolist()
            video = grid_h * grid_w // self.processor.video_processor.merge_size**2
        if "feature_attention_mask" in media:
            audio = self.processor.audio_tokens(int(media["feature_attention_mask"].sum()))
        if not video:
            return [self.audio_id] * audio
        seconds_per_grid = self.processor.video_processor.temporal_patch_size / C.VIDEO_FPS
        layout = self.processor.video_audio_layout(grid_t, video, seconds_per_grid, audio) if audio else [("video", grid_t * video)]
        tokens = {"video": self.video_id, "audio": self.audio_id}
        return [tokens[modality] for modality, count in layout for _ in range(count)]


def _in_position_order(ids: torch.Tensor, stacks: dict[int, list[torch.Tensor]]) -> list[torch.Tensor] | None:
    """Each layer's image and video deepstack features merged in the order their tokens stand in `ids`."""
    if not stacks:
        return None
    if len(stacks) == 1:
        return next(iter(stacks.values()))
    visual = torch.isin(ids, torch.tensor(list(stacks), device=ids.device))
    kinds = ids[visual]
    merged = []
    for layers in zip(*stacks.values()):
        joint = layers[0].new_zeros((int(visual.sum()), layers[0].shape[-1]))
        for token, layer in zip(stacks, layers):
            joint[kinds == token] = layer
        merged.append(joint)
    return merged


def live_audio_features(processor, audio: np.ndarray) -> torch.Tensor:
    """The log-mel (128, frames) of a live turn's sound as the live path computes it, 2 s window by window:
    what transformers must be fed to see the same audio (tests/test_live_input.py)."""
    windows = [audio[i : i + SAMPLES_PER_WINDOW] for i in range(0, len(audio), SAMPLES_PER_WINDOW)]
    return torch.cat([processor._audio_features([w])[0]["input_features"][0] for w in windows], dim=-1)
