"""A streaming conversation with Qwen2.5-Omni or Qwen3-Omni: input in as it comes, text and speech out as they
are made (what differs between the families: model/families/, behind model/engine/family.py).

`OmniSession` coordinates one conversation over the engine's stages:

    add_user_turn(parts) ---------------------> encode.encoding_whole_turn ----+
    feed_audio / feed_frame -> live_input.LiveTimeline -> settled windows ------+-> thinker cache (+ talker's prompt)
    end_user_turn --------------------------------------> every open window, closing tokens
    continue_user_turn ---------------------------------> the turn's closing (and an answer begun) taken back
    respond --------------------------------------------> answer.AnswerDecoder -> TextDelta, AudioChunk, AnswerDone
    history / restore ----------------------------------> history records, replayed through the same calls

A live turn's prompt depends on its content alone (model/engine/live_input.py): windows are prefilled
while the user speaks, as soon as they are settled, and a window whose content changes afterwards (a late
camera frame) is rolled back and prefilled again. With greedy decoding the tokens and codes are
transformers' own (tests/test_session.py, tests/test_live_input.py). One thread uses a session at a time;
only `interrupt` may be called from another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from model import constants as C
from model.engine import history as H
from model.engine.answer import AnswerDecoder
from model.engine.encode import LivePrompt, PromptEncoder, TurnMedia
from model.engine.events import AnswerSettings, ContextTrimmed, Event
from model.engine.history import AnswerTurn, LiveTurn, Record, UserTurn
from model.engine.kv_cache import GrowingKV, StaticKV
from model.engine.live_input import SAMPLES_PER_WINDOW, LiveTimeline, Window
from model.engine.prompt import TurnTemplate
from model.engine.steps import run_to_end
from model.engine.thinker_stream import ThinkerStream
from model.inputs.conversation import Audio, Part, Video

DECODE_MODES = ("growing", "static", "compiled")
# Positions of a whole turn prefilled per forward pass (`adding_user_turn`): on a GPU about one round of the
# others' batched decode steps, so a 60 s upload holds nobody's speech for long; a typed turn is one piece.
PREFILL_PIECE = 1024


@dataclass
class _Checkpoint:
    """The caches between two prefills: where a live window that must be redone rolls back to."""

    thinker: tuple[int, int, int]
    talker: tuple[int, int] | None
    talker_fed: int


@dataclass
class _PrefilledWindow:
    plan: Window  # what it holds: if the timeline's plan for it changes, it is redone
    before: _Checkpoint  # the caches before it
    prompt: LivePrompt  # the turn's prompt through it


@dataclass
class _OpenLiveTurn:
    timeline: LiveTimeline
    start: _Checkpoint  # the caches before the turn
    offset: int  # rope id of the turn's first token
    first: bool  # the conversation's first turn (its head carries the system prompt)
    windows: list[_PrefilledWindow] = field(default_factory=list)
    closing: _Checkpoint | None = None  # the caches before its closing tokens, once it has ended


class OmniSession:
    def __init__(
        self,
        loaded,
        system_prompt: str | None = None,
        use_audio_in_video: bool = True,
        prefill_talker: bool = True,
        max_positions: int | None = None,
        interrupt: threading.Event | None = None,
        decode: str = "auto",
        prefill_piece: int | None = None,
    ):
        """`interrupt`: an event that stops the running answer when set, for an owner that must not reach
        into the session from another thread (default: the session's own, set by `interrupt()`).
        `decode`: the thinker's and talker's KV caches and decode steps (model/engine/kv_cache.py): "growing"
        (transformers' DynamicCache), "static" (a StaticCache), "compiled" (a StaticCache whose one-token steps
        run through torch.compile, CUDA graphs on CUDA); "auto" is "compiled" on CUDA, else "growing".
        `prefill_piece`: the most positions of a whole turn prefilled in one forward pass (`adding_user_turn`;
        default PREFILL_PIECE)."""
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.parts = loaded.family.engine_parts(self.model, self.processor)  # what differs between model families
        # Default: the family's (Qwen2.5-Omni speaks only under its fixed prompt).
        self.template = TurnTemplate(self.processor, loaded.family.system_prompt if system_prompt is None else system_prompt)
        self.encoder = PromptEncoder(self.model.thinker, self.processor)
        # One layout for every video of the conversation, as transformers requires; a video without sound
        # is laid out without audio either way.
        self.use_audio_in_video = use_audio_in_video
        # Feed the talker's prompt as input arrives (off: only when a spoken answer is asked for).
        self.prefill_talker = prefill_talker
        # The rope ids the thinker was trained with; the conversation is trimmed before it would pass them.
        self.max_positions = max_positions or self.model.thinker.config.text_config.max_position_embeddings
        self._interrupt = interrupt or threading.Event()
        if decode == "auto":
            decode = "compiled" if loaded.device.type == "cuda" else "growing"
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES} or 'auto', got {decode!r}")
        self.decode = decode
        self.prefill_piece = prefill_piece or PREFILL_PIECE
        self._restoring = False
        self.windows_redone = 0  # live windows prefilled again because a late frame changed them
        self._clear()

    def _clear(self) -> None:
        has_talker = hasattr(self.model, "talker")
        reads = self.parts.inputs if has_talker else None
        self.thinker = ThinkerStream(self.model.thinker, self._kv(self.model.thinker.config.text_config), reads)
        self.talker = self.parts.talker(self._kv) if has_talker else None
        self._talker_fed = 0  # entries of thinker.talker_states already in the talker's cache
        self._logits: torch.Tensor | None = None  # after the last prefill: the answer's first choice
        self._closing: list[int] = []  # the last answer's unfed tail (its last token, if not <|im_end|>)
        self._records: list[Record] = []
        self._live: _OpenLiveTurn | None = None
        self._ended_live: _OpenLiveTurn | None = None  # the last live turn, while it may still be continued
        self._input_ended: float | None = None  # when the user's turn ended: the timings' zero

    def _kv(self, config) -> GrowingKV | StaticKV:
        if self.decode == "growing":
            return GrowingKV(config)
        return StaticKV(config, compiled=self.decode == "compiled")

    @property
    def system_prompt(self) -> str:
        return self.template.system_prompt

    @system_prompt.setter
    def system_prompt(self, prompt: str) -> None:
        self.template = TurnTemplate(self.processor, prompt)

    @property
    def turns(self) -> int:
        return H.user_turns(self._records)

    @property
    def hearing(self) -> bool:
        """A live turn is open (being heard)."""
        return self._live is not None

    @property
    def live_windows(self) -> int:
        """Windows of the live turn being heard that are already in the cache."""
        return len(self._live.windows) if self._live else 0

    def interrupt(self) -> None:
        """Stops the running answer at its next decode step (safe from any thread). The answer's text up to
        there stays in the conversation, as it was said."""
        self._interrupt.set()

    # ------------------------------------------------------------------ whole turns

    def add_user_turn(self, *parts: Part) -> None:
        """Prefills a whole user turn (text, audio, images, videos) and the assistant's prompt. A live turn
        still open is dropped."""
        run_to_end(self.adding_user_turn(*parts))

    def adding_user_turn(self, *parts: Part, media: TurnMedia | None = None) -> Iterator[None]:
        """`add_user_turn` in steps, the model worker running one per round: the processor (unless `media`,
        from `encode.turn_media`, holds its work), the encoders a piece at a time, then the prefill in pieces
        of `prefill_piece` positions. Closed early, the turn is not in the caches."""
        self._input_ended = time.perf_counter()
        if self._live is not None:
            self._rewind(self._live.start)
            self._live = None
        self._ended_live = None
        self._close_last_answer()
        start = self.thinker.next_position
        text = self.template.turn_text(list(parts), first=not self._records)
        segment = yield from self.encoder.encoding_whole_turn(text, list(parts), self.use_audio_in_video, start, media)
        span = int(segment.position_ids.max()) + 1 - start
        if span + 1 > self.max_positions // 2:
            raise ValueError(
                f"This input needs {span} positions; the model holds {self.max_positions} in all. "
                "Send a shorter recording or video."
            )
        if segment.ids.shape[1] > self.prefill_piece:
            yield  # the encoders' work was a step of its own
        self._logits = yield from self.thinker.prefill_pieces(segment, piece=self.prefill_piece)
        self._records.append(UserTurn(list(parts), self.thinker.next_position - start))
        # The talker's prompt is fed once the first token is chosen (respond), off the first text's path.

    # ------------------------------------------------------------------ live turns

    def feed_audio(self, samples: np.ndarray) -> None:
        """Live microphone audio (16 kHz mono float32, any chunk size)."""
        self._open_live().timeline.add_audio(samples)
        self._prefill_settled()

    def feed_frame(self, frame: np.ndarray, seconds: float) -> None:
        """A live camera frame (RGB uint8) taken `seconds` after the turn began."""
        if self._open_live().timeline.add_frame(frame, seconds):
            self._prefill_settled()

    def feed(self, audio: np.ndarray, frames=()) -> None:
        """More of a live turn at once: 16 kHz audio and camera frames, each (frame, seconds into the turn)."""
        timeline = self._open_live().timeline
        timeline.add_audio(audio)
        for frame, seconds in frames:
            timeline.add_frame(frame, seconds)
        self._prefill_settled()

    def feed_live(self, *parts: Part, chunk_samples: int = 1600) -> None:
        """Feeds recorded audio and video parts as one live stream in real-time order (audio in 0.1 s chunks,
        each frame once its time has come) and ends the turn: the `--live` path for files."""
        audio = [p.samples for p in parts if isinstance(p, Audio)]
        videos = [p.clip for p in parts if isinstance(p, Video)]
        if len(videos) > 1 or len(audio) + len(videos) != len(parts):
            raise ValueError("A live turn is audio and at most one video (the camera).")
        clip = videos[0] if videos else None
        if clip is not None and clip.audio is not None:
            audio.append(clip.audio)
        sound = np.concatenate(audio) if audio else np.zeros(0, np.float32)
        frames = [] if clip is None else [(f, float(t)) for f, t in zip(clip.frames, clip.timestamps)]
        for start in range(0, len(sound), chunk_samples):
            while frames and frames[0][1] * C.INPUT_SAMPLE_RATE <= start:
                self.feed_frame(*frames.pop(0))
            self.feed_audio(sound[start : start + chunk_samples])
        for frame, seconds in frames:
            self.feed_frame(frame, seconds)
        self.end_user_turn()

    def end_user_turn(self) -> None:
        """The user stopped: encode every window still open, close the turn, ready to `respond`."""
        self._input_ended = time.perf_counter()
        live = self._live
        if live is None or live.timeline.empty:
            self._live = None
            raise ValueError("The live turn has no audio and no frames.")
        timeline = live.timeline
        if timeline.window_count() == 0:
            self._live = None
            raise ValueError("The live turn is too short to hear.")
        self._roll_back_changed(final=True)
        # The windows still open, a forward pass per audio encoder group (a window each for Qwen2.5-Omni), the
        # last with the closing tokens (one pass fewer before the first text). Their talker prompt waits for the
        # answer's first token, off that path too.
        units = timeline.units(len(live.windows), timeline.window_count())
        plans = [[timeline.plan(index, final=True) for index in unit] for unit in units]
        for unit in plans[:-1]:
            self._prefill_windows(unit)
        self._prefill_windows(plans[-1] if plans else [], close=True)
        self._live, self._ended_live = None, live
        record = LiveTurn(timeline.audio()[: timeline.kept_samples()], timeline.slot_frames())
        record.span = self.thinker.next_position - live.offset
        self._records.append(record)
        # The windows' talker prompt is in already; the closing's is fed once the first token is chosen.

    def continue_user_turn(self) -> None:
        """The user speaks on after their live turn had ended (a pause inside a question), before any of its
        answer was heard: the answer, if one was started, and the turn's closing are taken back, and the same
        live turn goes on (`feed_audio`, `feed_frame`, then `end_user_turn` again). The caches then hold what
        they would have held had the turn never ended: windows still settled stay, the rest is redone."""
        live = self._ended_live
        if live is None:
            raise RuntimeError("continue_user_turn must follow the end of a live turn, or its answer")
        if isinstance(self._records[-1], AnswerTurn):
            self._records.pop()
        self._records.pop()  # the live turn: it is recorded again when it ends
        self._rewind(live.closing)
        live.closing = None
        self._closing, self._logits = [], None
        self._live, self._ended_live = live, None
        self._roll_back_changed(final=False)  # its last window was encoded as the last: it is open again

    def _open_live(self) -> _OpenLiveTurn:
        self._ended_live = None
        if self._live is None:
            if not self._restoring and self.thinker.next_position + self.max_positions // 4 > self.max_positions:
                self._trim(keep_last=0)  # make room before the user's speech goes in
            self._close_last_answer()
            timeline = LiveTimeline(self.parts.audio_group_samples)
            self._live = _OpenLiveTurn(timeline, self._checkpoint(), self.thinker.next_position, not self._records)
        return self._live

    def _prefill_settled(self) -> None:
        live = self._live
        self._roll_back_changed(final=False)
        timeline = live.timeline
        for unit in timeline.units(len(live.windows), timeline.settled_count()):
            self._prefill_windows([timeline.plan(index, final=False) for index in unit])
            self._feed_talker_prompt()  # the talker's prompt too, so the answer starts with little to do

    def _roll_back_changed(self, final: bool) -> None:
        """Rolls the caches back to the first prefilled window whose content is not what it was."""
        live = self._live
        for index, window in enumerate(live.windows):
            if window.plan != live.timeline.plan(index, final):
                self._rewind(window.before)
                self.windows_redone += len(live.windows) - index
                del live.windows[index:]
                return

    @torch.no_grad()
    def _prefill_windows(self, plans: list[Window], close: bool = False) -> None:
        """Encodes windows (their frame pairs, their sound) and prefills their tokens in one forward pass:
        each window's video, then its audio; with `close`, the turn's closing tokens after them."""
        live, timeline = self._live, self._live.timeline
        talker = self.talker.mark() if self.talker else None
        segments, prefilled = [], []
        so_far = live.windows[-1].prompt if live.windows else LivePrompt()
        groups: dict[tuple[int, int], list[torch.Tensor]] = {}  # each group encoded once per pass
        for plan in plans:
            head = self.template.live_ids("head", live.first, plan.camera, plan.sound) if plan.index == 0 else []
            tail = self.template.live_ids("tail", live.first, plan.camera, plan.sound)
            before = _Checkpoint(self.thinker.mark_after(*segments), talker, self._talker_fed)
            frames = [timeline.frame(f) for f in plan.frames]
            audio_tokens = None
            if plan.group_samples:  # an encoder that attends across windows: this window's part of its group
                pieces, place = timeline.group_audio(plan)
                key = (plan.index - place, plan.group_samples)
                if key not in groups:
                    groups[key] = self.encoder.group_audio_tokens(pieces)
                audio_tokens = groups[key][place]
            segment, so_far = self.encoder.live_window(
                frames, timeline.window_audio(plan), head, tail, so_far, live.offset, audio_tokens
            )
            segments.append(segment)
            prefilled.append(_PrefilledWindow(plan, before, so_far))
        if close:
            last = (prefilled or live.windows)[-1].plan
            tail = self.template.live_ids("tail", live.first, last.camera, last.sound)
            live.closing = _Checkpoint(self.thinker.mark_after(*segments), talker, self._talker_fed)
            segments.append(self.encoder.live_closing(tail, so_far, live.offset))
        self._logits = self.thinker.prefill(*segments)
        live.windows.extend(prefilled)

    # ------------------------------------------------------------------ the caches

    def _checkpoint(self) -> _Checkpoint:
        return _Checkpoint(self.thinker.mark(), self.talker.mark() if self.talker else None, self._talker_fed)

    def _rewind(self, checkpoint: _Checkpoint) -> None:
        self.thinker.rewind(checkpoint.thinker)
        if self.talker is not None and self._talker_fed > checkpoint.talker_fed:
            self.talker.rewind(checkpoint.talker)
            self._talker_fed = checkpoint.talker_fed

    def _close_last_answer(self) -> None:
        if self._closing:
            self.thinker.prefill(self.thinker.text_segment(self._closing))
            self._closing = []

    def _feed_talker_prompt(self) -> None:
        """Prefills the talker with the thinker states it has not read yet (its prompt is the conversation), as
        input arrives, when `prefill_talker` is on."""
        if self.talker is not None and self.prefill_talker and (prompt := self._unread_talker_states()):
            self.talker.feed_prompt(*prompt)

    def _unread_talker_states(self, through: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The thinker states the talker has not read, up to entry `through` (default: all), with their rope
        ids, counted as read from here."""
        through = len(self.thinker.talker_states) if through is None else through
        if through <= self._talker_fed:
            return None
        states = torch.cat(self.thinker.talker_states[self._talker_fed : through], dim=1)
        positions = torch.cat(self.thinker.state_positions[self._talker_fed : through], dim=-1)
        self._talker_fed = through
        return (states, positions) if states.shape[1] else None  # Qwen3-Omni's talker reads user turns only

    def cache_bytes(self) -> int:
        """The memory of the conversation's caches: the thinker's and the talker's keys and values (the
        states kept for the talker add about a tenth; not counted, so that this stays cheap to ask)."""
        return self.thinker.cache.nbytes() + (self.talker.cache.nbytes() if self.talker is not None else 0)

    # ------------------------------------------------------------------ history

    @property
    def history(self) -> list[Record]:
        """The conversation as it was given, for `restore` (here or in another process)."""
        return list(self._records)

    def restore(self, history: list[Record]) -> None:
        """Rebuilds the caches from `history` (with a new system prompt, after a failed turn, in a ZeroGPU call
        whose process has no caches), through the same calls that built them. A live turn in progress is
        dropped."""
        for _ in self.restoring(history):
            pass

    def restoring(self, history: list[Record]) -> Iterator[None]:
        """`restore`, one record at a time: a long conversation's rebuild can be interleaved with other
        conversations' work (the model worker runs one step of it per round)."""
        self._clear()
        for record in history:
            self._restoring = True
            try:
                if isinstance(record, UserTurn):
                    yield from self.adding_user_turn(*record.parts)
                elif isinstance(record, LiveTurn):
                    yield from self._hearing_again(record)
                else:
                    self._replay_answer(record.tokens)
            finally:
                self._restoring = False
            yield
        self._input_ended = None

    def _hearing_again(self, record: LiveTurn) -> Iterator[None]:
        """A live turn of the history fed again as it arrived, a window's time of it per step (live input
        gives the same caches in any arrival sizes), then ended."""
        frames = list(record.frames)
        for start in range(0, len(record.audio), SAMPLES_PER_WINDOW):
            end = start + SAMPLES_PER_WINDOW
            due = [frame for frame in frames if frame[1] * C.INPUT_SAMPLE_RATE < end]
            frames = frames[len(due):]
            self.feed(record.audio[start:end], due)
            yield
        self.feed(record.audio[:0], frames)
        self.end_user_turn()

    def _replay_answer(self, tokens: list[int]) -> None:
        start = self.thinker.next_position
        if tokens[:-1]:
            self.thinker.prefill(self.thinker.text_segment(tokens[:-1]))
        self._closing = [] if not tokens or tokens[-1] == C.IM_END_ID else [tokens[-1]]
        self._logits = None
        self._records.append(AnswerTurn(list(tokens), self.thinker.next_position - start))
        self._feed_talker_prompt()

    def _trim(self, keep_last: int, room: int = 0) -> int:
        """Drops the oldest exchanges until the rest plus `room` fits in half the positions, then rebuilds the
        caches from what is kept. Returns the user turns dropped."""
        first = H.first_kept(self._records, self.max_positions // 2 - room, keep_last)
        dropped = H.user_turns(self._records[:first])
        self.restore(self._records[first:])  # the last user turn's replay leaves the answer's first logits
        return dropped

    def keep_answer(self, count: int) -> None:
        """Keeps only the first `count` tokens of the last answer, e.g. what the user heard before cutting in:
        the caches and the history forget the rest, and the next turn closes the answer there."""
        if not self._records or not isinstance(self._records[-1], AnswerTurn) or self._live is not None:
            raise RuntimeError("keep_answer must follow an answer")
        last = self._records[-1]
        self._ended_live = None  # the user heard some of it: the turn is over
        if count >= len(last.tokens):
            return
        kept = last.tokens[: max(0, count)]
        unfed = len(self._closing) + (last.tokens[-1] == C.IM_END_ID)  # chosen, never fed: 0 or 1
        drop = len(last.tokens) - unfed - len(kept)
        self._records[-1] = AnswerTurn(kept, last.span - drop)
        self._closing = []  # all that is kept is in the cache (drop >= 0); the next turn's text closes it
        if drop > 0 and self._talker_fed > len(self.thinker.talker_states) - drop:
            self.restore(self._records)  # the talker has read those states too (after a restore): rebuild
        elif drop > 0:
            self.thinker.forget_last(drop)

    # ------------------------------------------------------------------ the answer

    @torch.no_grad()
    def respond(self, settings: AnswerSettings | None = None, batched: bool = False) -> Iterator[Event]:
        """The answer's events. `batched`: its one-token forwards come out too, as DecodeSteps, for the model
        thread to run with other conversations' (model/engine/batched_step.py); each must have run before the
        next event is asked for."""
        settings = settings or AnswerSettings()
        if self._logits is None:
            raise RuntimeError("add a user turn before asking for an answer")
        started = self._input_ended or time.perf_counter()
        self._input_ended = None
        if self.thinker.next_position + settings.max_new_tokens + 2 > self.max_positions:
            dropped = self._trim(keep_last=1, room=settings.max_new_tokens)
            yield ContextTrimmed(dropped, f"The conversation was too long for the model; its {dropped} oldest turns were dropped.")
            if self.thinker.next_position + settings.max_new_tokens + 2 > self.max_positions:
                settings = replace(settings, max_new_tokens=self.max_positions - self.thinker.next_position - 2)
        voices = self.loaded.voices
        if settings.voice not in voices:
            raise ValueError(f"Unknown voice {settings.voice!r}; this checkpoint has {', '.join(sorted(voices))}.")
        speaking = not settings.text_only and self.talker is not None
        prompt_states = len(self.thinker.talker_states)
        decoder = AnswerDecoder(
            self.thinker,
            self.talker,
            self.parts.vocoder(settings.voice, voices[settings.voice], settings, self.loaded.voice_cache) if speaking else None,
            voices[settings.voice] if speaking else None,
            self.processor.tokenizer,
            settings,
            self._interrupt,
            started,
            # The talker's prompt (the conversation so far), in its first forward pass: after the first text.
            talker_prompt=lambda: self._unread_talker_states(through=prompt_states),
            talker_inputs=self.parts.inputs,
            batched=batched,
        )
        logits, self._logits = self._logits, None
        start = self.thinker.next_position
        self._interrupt.clear()
        try:
            yield from decoder.events(logits)
        finally:
            # Also when the consumer stops early (a closed tab): the conversation stays consistent. A token
            # chosen but never fed starts the next turn (unless it is <|im_end|>, which the next turn's text
            # brings itself); an interrupt can land after the last token was fed, and then none is.
            self._closing = [t for t in decoder.tokens[decoder.fed :] if t != C.IM_END_ID]
            self._records.append(AnswerTurn(list(decoder.tokens), self.thinker.next_position - start))
            if speaking:
                self.talker.end_answer()
        yield decoder.done()
