"""A streaming conversation with Qwen2.5-Omni: input in as it comes, text and speech out as they are made.

One `OmniSession` holds one conversation: the thinker's KV cache across turns, the talker's cache over the
conversation so far, and what the next turn must start with. `add_user_turn` prefills a whole user turn;
`feed_audio` / `feed_frame` / `end_user_turn` take a live turn and prefill each 2 s window as it completes
(the encoders run here, so little is left for the answer but decoding); `respond` decodes the answer with
the thinker and the talker interleaved, the talker one token behind, and turns codes into audio chunk by
chunk. With greedy decoding its tokens and codes are transformers' own (tests/test_session.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from model import constants as C
from model.conversation import Audio, Conversation, Part, Text, Video
from model.live_input import FRAMES_PER_WINDOW, SAMPLES_PER_WINDOW, LiveTurn
from model.processing import audio_token_count
from model.sampling import TALKER_DEFAULT, THINKER_DEFAULT, Sampling, TokenChooser
from model.talker_stream import TalkerStream
from model.thinker_stream import Segment, ThinkerStream
from model.token2wav_stream import StreamingToken2Wav


@dataclass
class TextDelta:
    text: str


@dataclass
class AudioChunk:
    samples: np.ndarray  # float32, mono
    sample_rate: int = C.OUTPUT_SAMPLE_RATE


@dataclass
class Timings:
    """Seconds from the end of the user's input: the call to `end_user_turn` (live) or `add_user_turn`,
    so the encoding and prefill of what was left when the user stopped count too."""

    first_text: float | None = None
    first_audio: float | None = None
    total: float = 0.0
    tokens: int = 0
    codes: int = 0
    audio_seconds: float = 0.0


@dataclass
class AnswerDone:
    text: str
    tokens: list[int]
    codes: list[int]
    timings: Timings
    interrupted: bool = False
    token_margins: list[float] = field(default_factory=list)  # greedy top-2 margins (see TokenChooser)
    code_margins: list[float] = field(default_factory=list)


@dataclass
class ContextTrimmed:
    """The conversation outgrew the model's positions: its oldest exchanges were dropped."""

    dropped_turns: int
    message: str


Event = TextDelta | AudioChunk | AnswerDone | ContextTrimmed


@dataclass
class Record:
    """One piece of the conversation as it was given: enough to rebuild the caches (without the oldest
    turns, with another system prompt, or in another process). Picklable."""

    kind: str  # "user" (parts), "live" (audio, frames) or "answer" (tokens)
    payload: object
    span: int = 0  # rope ids it used


@dataclass
class AnswerSettings:
    voice: str = "Chelsie"
    text_only: bool = False
    max_new_tokens: int = 1024
    talker_max_new_tokens: int = C.TALKER_MAX_NEW_TOKENS
    min_new_tokens: int = 0  # the thinker's EOS is suppressed until then (transformers' min_new_tokens)
    talker_min_new_tokens: int = 0  # likewise the talker's EOS codes: forces an answer's length (benchmarks)
    thinker: Sampling = field(default_factory=lambda: THINKER_DEFAULT)
    talker: Sampling = field(default_factory=lambda: TALKER_DEFAULT)
    seed: int | None = None
    noise_seed: int | None = None  # token2wav's starting noise (fixed for reproducible audio)
    first_chunk_frames: int = 48  # mel frames (2 per code); multiples of the DiT block (24)
    chunk_frames: int = 48
    solver: str = "rk4"  # "rk4" (the reference) or "euler" (a quarter of the DiT passes)
    num_steps: int = 10  # ODE time points


class TextStreamer:
    """Incremental detokenisation that never splits a multi-byte character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


class OmniSession:
    def __init__(
        self,
        loaded,
        system_prompt: str = C.AUDIO_SYSTEM_PROMPT,
        use_audio_in_video: bool = True,
        prefill_talker: bool = True,
        max_positions: int | None = None,
    ):
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.system_prompt = system_prompt
        # One layout for every video of the conversation, as transformers requires; a video without sound
        # is laid out without audio either way.
        self.use_audio_in_video = use_audio_in_video
        # Feed the talker's prompt as input arrives (off: only when a spoken answer is asked for).
        self.prefill_talker = prefill_talker
        self.thinker = ThinkerStream(self.model.thinker)
        self.talker = TalkerStream(self.model.talker) if hasattr(self.model, "talker") else None
        self._talker_fed = 0  # entries of thinker.talker_states already in the talker's cache
        self._logits: torch.Tensor | None = None  # after the last prefill: the answer's first choice
        self._closing: list[int] = []  # the last answer's unfed tail (its last token, if not <|im_end|>)
        self.turns = 0
        self._interrupt = threading.Event()
        self._live: LiveTurn | None = None
        self._live_offset = 0  # rope id where the live turn's prompt starts
        self.last_live_features: torch.Tensor | None = None  # the last live turn's per-window log-mel
        # The rope ids the thinker was trained with; the conversation is trimmed before it would pass them.
        self.max_positions = max_positions or self.model.thinker.config.text_config.max_position_embeddings
        self._records: list[Record] = []
        self._replaying = False
        self._input_ended: float | None = None  # when the user's turn ended: the timings' zero

    def interrupt(self) -> None:
        """Stops the running answer at its next decode step (safe from any thread). The answer's text up to
        there stays in the conversation, as it was said."""
        self._interrupt.set()

    # ------------------------------------------------------------------ input

    def _turn_text(self, parts: list[Part]) -> str:
        conversation = Conversation(self.system_prompt)
        conversation.add_user(*parts)
        messages, _ = conversation.model_inputs()  # the one place text is made safe for the prompt
        user_turn = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        if self.turns == 0:
            return user_turn
        # Later turns follow the previous answer: close it, then the user's turn (without the system part).
        system_text = self.processor.apply_chat_template(messages[:1], add_generation_prompt=False)
        return "<|im_end|>\n" + user_turn[len(system_text) :]

    @torch.no_grad()
    def encode_segment(self, text: str, parts: list[Part]) -> Segment:
        """Tokenise a prompt segment with its media, run the encoders, and place it after the cache."""
        conversation = Conversation(self.system_prompt, [])
        conversation.add_user(*parts)
        _, media = conversation.model_inputs()
        interleave = self.use_audio_in_video and all(v.audio is not None for v in media["videos"]) and bool(media["videos"])
        if media["videos"] and not interleave:
            # model_inputs put each video's sound after it as a separate audio part only when it decided
            # not to interleave; keep the two decisions the same.
            media["audio"] = [p.samples for p in parts if isinstance(p, Audio)] + [
                v.audio for v in media["videos"] if v.audio is not None
            ]
        inputs = self.processor(
            text=text,
            audio=media["audio"] or None,
            images=media["images"] or None,
            videos=[clip.frames for clip in media["videos"]] or None,
            video_fps=[clip.fps for clip in media["videos"]] or None,
            use_audio_in_video=interleave,
        ).to(self.thinker.device)
        thinker = self.model.thinker
        ids = inputs["input_ids"]
        embeds = self.thinker.embed(ids)
        dtype = embeds.dtype
        if "input_features" in inputs:
            features = thinker.model.get_audio_features(
                inputs["input_features"].to(dtype), inputs["feature_attention_mask"]
            ).last_hidden_state
            embeds = embeds.masked_scatter((ids == C.AUDIO_TOKEN_ID).unsqueeze(-1), features.to(dtype))
        if "pixel_values" in inputs:
            out = thinker.model.get_image_features(inputs["pixel_values"].to(dtype), inputs["image_grid_thw"])
            features = torch.cat(out.pooler_output, dim=0)
            embeds = embeds.masked_scatter((ids == C.IMAGE_TOKEN_ID).unsqueeze(-1), features.to(dtype))
        if "pixel_values_videos" in inputs:
            out = thinker.model.get_video_features(inputs["pixel_values_videos"].to(dtype), inputs["video_grid_thw"])
            features = torch.cat(out.pooler_output, dim=0)
            embeds = embeds.masked_scatter((ids == C.VIDEO_TOKEN_ID).unsqueeze(-1), features.to(dtype))
        positions, _ = thinker.model.get_rope_index(
            ids,
            inputs.get("image_grid_thw"),
            inputs.get("video_grid_thw"),
            inputs["attention_mask"],
            interleave,
            inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None,
            inputs.get("video_second_per_grid"),
        )
        return Segment(ids, embeds, positions + self.thinker.next_position)

    def add_user_turn(self, *parts: Part) -> None:
        """Prefills a whole user turn (text, audio, images, videos) and the assistant's prompt."""
        if not self._replaying:
            self._input_ended = time.perf_counter()
        if self._closing:
            self.thinker.prefill(self.thinker.text_segment(self._closing))
            self._closing = []
        start = self.thinker.next_position
        segment = self.encode_segment(self._turn_text(list(parts)), list(parts))
        span = int(segment.position_ids.max()) + 1 - start
        if span + 1 > self.max_positions // 2:
            raise ValueError(
                f"This input needs {span} positions; the model holds {self.max_positions} in all. "
                "Send a shorter recording or video."
            )
        self._logits = self.thinker.prefill(segment)
        self.turns += 1
        self._record("user", list(parts), start)
        self._feed_talker_prompt()

    # ------------------------------------------------------------------ live input

    def feed_audio(self, samples: np.ndarray) -> None:
        """Live microphone audio (16 kHz mono float32, any chunk size); complete 2 s windows are prefilled."""
        live = self._live_turn()
        live.audio.append(np.asarray(samples, dtype=np.float32))
        live.audio_samples += len(samples)
        self._prefill_ready_windows()

    def feed_frame(self, frame: np.ndarray, seconds: float) -> None:
        """A live camera frame (RGB uint8) taken `seconds` after the turn began; kept at 2 fps."""
        live = self._live_turn()
        if seconds + 1e-6 < live.next_frame_time:
            return
        live.frames.append(np.asarray(frame, dtype=np.uint8))
        live.next_frame_time = len(live.frames) / C.VIDEO_FPS
        self._prefill_ready_windows()

    def feed(self, audio: np.ndarray, frames=()) -> None:
        """More of a live turn at once: camera frames (each with its seconds into the turn) first, so that
        every 2 s window is complete when its audio arrives, then 16 kHz audio."""
        for frame, seconds in frames:
            self.feed_frame(frame, seconds)
        if len(audio):
            self.feed_audio(audio)

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
        frames = [] if clip is None else list(zip(clip.frames, clip.timestamps))
        end = max(len(sound), int((frames[-1][1] + 0.5) * C.INPUT_SAMPLE_RATE) if frames else 0)
        for start in range(0, end, chunk_samples):
            while frames and frames[0][1] <= start / C.INPUT_SAMPLE_RATE + 1e-9:
                self.feed_frame(*frames.pop(0))
            if start < len(sound):
                self.feed_audio(sound[start : start + chunk_samples])
        for frame, seconds in frames:
            self.feed_frame(frame, float(seconds))
        self.end_user_turn()

    def end_user_turn(self) -> None:
        """The user stopped: encode the unfinished last window, close the turn, ready to `respond`."""
        self._input_ended = time.perf_counter()
        live = self._live
        if live is None or (live.audio_samples == 0 and not live.frames):
            raise ValueError("The live turn has no audio and no frames.")
        self._prefill_ready_windows()
        rest_audio = live.audio_samples - live.windows_done * SAMPLES_PER_WINDOW
        rest_frames = len(live.frames) - live.windows_done * FRAMES_PER_WINDOW
        if rest_audio >= 160 or rest_frames > 0:  # 160 samples: one mel frame
            self._prefill_window(live.windows_done, final=True)
        closing = self._closing_text(live)
        self._logits = self._prefill_live_tokens(live, self.processor.tokenizer(closing).input_ids)
        self.last_live_features = torch.cat(live.features, dim=-1) if live.features else None
        self._live = None
        self.turns += 1
        self._record("live", (live.audio_array(), list(live.frames)), self._live_offset)
        self._feed_talker_prompt()

    def _live_turn(self) -> LiveTurn:
        if self._live is None:
            if self._closing:
                self.thinker.prefill(self.thinker.text_segment(self._closing))
                self._closing = []
            self._live = LiveTurn()
            self._live_offset = self.thinker.next_position
            if self._live_offset + self.max_positions // 4 > self.max_positions and not self._replaying:
                self._trim(keep_last=0)  # make room before the user's speech goes in
                self._live_offset = self.thinker.next_position
        return self._live

    def _turn_frame(self) -> tuple[str, str]:
        """The text before and after a user turn's content (chat template), for this point of the conversation."""
        marker = "\x00"
        text = self._turn_text([Text(marker)])
        head, tail = text.split(marker)
        return head, tail

    def _closing_text(self, live: LiveTurn) -> str:
        closers = ("<|audio_eos|>" if live.audio_frames else "") + ("<|vision_eos|>" if live.video_grids else "")
        return closers + self._turn_frame()[1]

    def _prefill_ready_windows(self) -> None:
        live = self._live
        while live.window_ready(live.windows_done):
            self._prefill_window(live.windows_done, final=False)
            live.windows_done += 1
            self._feed_talker_prompt()  # the talker's prompt too, so the answer starts with little to do

    @torch.no_grad()
    def _prefill_window(self, index: int, final: bool) -> None:
        """Encodes window `index` (its audio, its frame pairs) and prefills its tokens: video, then audio."""
        live = self._live
        tokenizer = self.processor.tokenizer
        ids: list[int] = []
        audio = live.audio_array()[index * SAMPLES_PER_WINDOW : (index + 1) * SAMPLES_PER_WINDOW]
        frames = live.frames[index * FRAMES_PER_WINDOW : (index + 1) * FRAMES_PER_WINDOW]
        if not live.started:
            head = self._turn_frame()[0]
            openers = ("<|vision_bos|>" if frames else "") + ("<|audio_bos|>" if len(audio) else "")
            ids += tokenizer(head + openers).input_ids
            live.started = True
        thinker = self.model.thinker
        dtype = self.thinker.embed(torch.tensor([[0]], device=self.thinker.device)).dtype
        features = []
        if frames:
            if len(frames) % 2:  # frame pairs: an odd tail repeats its last frame, as the processor does
                frames = frames + frames[-1:]
            video = self.processor.video_processor([np.stack(frames)])
            grid = video["video_grid_thw"].to(self.thinker.device)
            live.video_grid_hw = tuple(grid[0, 1:].tolist())
            out = thinker.model.get_video_features(video["pixel_values_videos"].to(self.thinker.device, dtype), grid)
            video_features = torch.cat(out.pooler_output, dim=0)
            ids += [C.VIDEO_TOKEN_ID] * video_features.shape[0]
            live.video_grids += int(grid[0, 0])
            features.append((C.VIDEO_TOKEN_ID, video_features))
        if len(audio) >= 160:
            mel, _ = self.processor._audio_features([audio])
            mask = mel["feature_attention_mask"].to(self.thinker.device)
            frames_count = int(mask.sum())
            mel_features = mel["input_features"][..., :frames_count]
            live.features.append(mel_features[0])
            out = thinker.model.get_audio_features(
                mel_features.to(self.thinker.device, dtype), mask[:, :frames_count]
            ).last_hidden_state
            ids += [C.AUDIO_TOKEN_ID] * audio_token_count(frames_count)
            live.audio_frames += frames_count
            features.append((C.AUDIO_TOKEN_ID, out))
        self._prefill_live_tokens(live, ids, features)

    def _prefill_live_tokens(self, live: LiveTurn, new_ids: list[int], features=()) -> torch.Tensor:
        """Prefills `new_ids` (media placeholders filled with `features`) at their TMRoPE ids, computed by
        transformers' get_rope_index over the whole turn so far plus its closing tokens: ids already placed
        do not depend on what follows, so every window gets the ids the whole turn would give it."""
        if not new_ids:
            return None
        start = len(live.ids)
        live.ids += new_ids
        closing = self.processor.tokenizer(self._closing_text(live)).input_ids
        all_ids = torch.tensor([live.ids + closing], device=self.thinker.device)
        grid = None
        if live.video_grids:
            grid = torch.tensor([[live.video_grids, *live.video_grid_hw]], device=self.thinker.device)
        positions, _ = self.model.thinker.model.get_rope_index(
            all_ids,
            None,
            grid,
            torch.ones_like(all_ids),
            bool(live.video_grids and live.audio_frames),
            torch.tensor([live.audio_frames], device=self.thinker.device) if live.audio_frames else None,
            torch.tensor([2 / C.VIDEO_FPS], device=self.thinker.device) if live.video_grids else None,
        )
        ids = torch.tensor([new_ids], dtype=torch.long, device=self.thinker.device)
        embeds = self.thinker.embed(ids)
        for token_id, values in features:
            embeds = embeds.masked_scatter((ids == token_id).unsqueeze(-1), values.to(embeds.dtype))
        segment = Segment(ids, embeds, positions[:, :, start : start + len(new_ids)] + self._live_offset)
        return self.thinker.prefill(segment)

    # ------------------------------------------------------------------ context limit

    def _record(self, kind: str, payload, start: int) -> None:
        if not self._replaying:
            self._records.append(Record(kind, payload, self.thinker.next_position - start))

    def _trim(self, keep_last: int, room: int = 0) -> int:
        """Drops the oldest exchanges until the rest plus `room` fits in half the positions, then rebuilds
        the caches from what is kept (the last `keep_last` records always stay). Returns turns dropped."""
        records, budget = self._records, self.max_positions // 2 - room
        first = 0
        while first < len(records) - keep_last and sum(r.span for r in records[first:]) > budget:
            first += 1
            while first < len(records) - keep_last and records[first].kind == "answer":
                first += 1  # an answer goes with its question
        self.restore(records[first:])
        return sum(1 for r in records[:first] if r.kind != "answer")

    @property
    def history(self) -> list[Record]:
        """The conversation as it was given, for `restore` (here or in another process)."""
        return list(self._records)

    def restore(self, history: list[Record]) -> None:
        """Rebuilds the caches from `history`, e.g. with a new system prompt, after a failed turn, or in a
        ZeroGPU call whose process has no caches. A live turn in progress is dropped."""
        self.thinker = ThinkerStream(self.model.thinker)
        self.talker = TalkerStream(self.model.talker) if self.talker is not None else None
        self._talker_fed, self._closing, self.turns, self._logits = 0, [], 0, None
        self._live = None
        self._records = []
        for record in history:
            start = self.thinker.next_position
            self._replaying = True
            try:
                if record.kind == "user":
                    self.add_user_turn(*record.payload)
                elif record.kind == "live":
                    audio, frames = record.payload
                    for index, frame in enumerate(frames):
                        self.feed_frame(frame, index / C.VIDEO_FPS)
                    if len(audio):
                        self.feed_audio(audio)
                    self.end_user_turn()
                else:
                    self._replay_answer(record.payload)
            finally:
                self._replaying = False
            self._records.append(Record(record.kind, record.payload, self.thinker.next_position - start))

    def keep_answer(self, count: int) -> None:
        """Keeps only the first `count` tokens of the last answer, e.g. what the user heard before cutting in:
        the caches and the history forget the rest, and the next turn closes the answer there."""
        if not self._records or self._records[-1].kind != "answer" or self._live is not None:
            raise RuntimeError("keep_answer must follow an answer")
        tokens = self._records[-1].payload
        if count >= len(tokens):
            return
        kept = tokens[: max(0, count)]
        unfed = len(self._closing) + (tokens[-1] == C.IM_END_ID)  # chosen, never fed: 0 or 1
        drop = len(tokens) - unfed - len(kept)
        self._records[-1] = Record("answer", kept, self._records[-1].span - drop)
        self._closing = []  # all that is kept is in the cache (drop >= 0); the next turn's text closes it
        if drop > 0 and self._talker_fed > len(self.thinker.talker_states) - drop:
            self.restore(self._records)  # the talker has read those states too (after a restore): rebuild
        elif drop > 0:
            self.thinker.forget_last(drop)

    def _replay_answer(self, tokens: list[int]) -> None:
        fed = tokens[:-1]
        if fed:
            self.thinker.prefill(self.thinker.text_segment(fed))
        self._closing = [] if not tokens or tokens[-1] == C.IM_END_ID else [tokens[-1]]
        self._logits = None
        self._feed_talker_prompt()

    def _feed_talker_prompt(self, now: bool = False) -> None:
        """Prefills the talker with the thinker states it has not seen yet (its prompt is the conversation);
        as input arrives when `prefill_talker` is on, else `now`, when a spoken answer starts."""
        if self.talker is None or not (self.prefill_talker or now):
            return
        states = self.thinker.talker_states[self._talker_fed :]
        if states:
            positions = self.thinker.state_positions[self._talker_fed :]
            self.talker.feed_prompt(torch.cat(states, dim=1), torch.cat(positions, dim=-1))
            self._talker_fed = len(self.thinker.talker_states)

    # ------------------------------------------------------------------ output

    @torch.no_grad()
    def respond(self, settings: AnswerSettings | None = None) -> Iterator[Event]:
        settings = settings or AnswerSettings()
        if self._logits is None:
            raise RuntimeError("add a user turn before asking for an answer")
        if self.thinker.next_position + settings.max_new_tokens + 2 > self.max_positions:
            dropped = self._trim(keep_last=1, room=settings.max_new_tokens)
            yield ContextTrimmed(dropped, f"The conversation was too long for the model; its {dropped} oldest turns were dropped.")
            if self.thinker.next_position + settings.max_new_tokens + 2 > self.max_positions:
                settings = replace(settings, max_new_tokens=self.max_positions - self.thinker.next_position - 2)
        voices = self.loaded.voices
        if settings.voice not in voices:
            raise ValueError(f"Unknown voice {settings.voice!r}; this checkpoint has {', '.join(sorted(voices))}.")
        started = self._input_ended or time.perf_counter()
        self._input_ended = None
        timings = Timings()
        device = self.thinker.device
        generator = None
        if settings.seed is not None:
            generator = torch.Generator(device=device).manual_seed(settings.seed)
        think = TokenChooser(
            settings.thinker, generator=generator, device=device, min_new_tokens=settings.min_new_tokens, eos=(C.IM_END_ID,)
        )
        speaking = not settings.text_only and self.talker is not None
        talk = TokenChooser(
            settings.talker,
            suppress=(C.CODEC_BOS_ID,),
            generator=generator,
            device=device,
            min_new_tokens=settings.talker_min_new_tokens,
            eos=C.TALKER_EOS_CODES,
        )
        if speaking:
            self._feed_talker_prompt(now=True)
            voice = voices[settings.voice]
            speech = StreamingToken2Wav(
                self.model.token2wav,
                voice,
                noise=settings.noise_seed,
                first_chunk_frames=settings.first_chunk_frames,
                chunk_frames=settings.chunk_frames,
                solver=settings.solver,
                num_steps=settings.num_steps,
            )
            embed = self.thinker.embed
            bos_embed = embed(torch.tensor([[voice["bos_token"]]], device=device))
            text_eos = embed(torch.tensor([[C.TALKER_TEXT_EOS_ID]], device=device))
            text_pad = embed(torch.tensor([[C.TALKER_TEXT_PAD_ID]], device=device))

        text = TextStreamer(self.processor.tokenizer)
        tokens: list[int] = []
        codes: list[int] = []
        code_logits = None
        talker_done = not speaking
        history = torch.tensor([self.thinker.ids], device=device)
        logits = self._logits
        self._logits = None
        answer_start = self.thinker.next_position
        self._interrupt.clear()
        interrupted = False
        fed = 0  # answer tokens in the thinker's cache; a chosen token is fed only if decoding goes on

        def audio_events(chunks) -> Iterator[AudioChunk]:
            for samples in chunks:
                if timings.first_audio is None:
                    timings.first_audio = time.perf_counter() - started
                timings.audio_seconds += len(samples) / C.OUTPUT_SAMPLE_RATE
                yield AudioChunk(samples)

        def talk_step(reply: torch.Tensor) -> Iterator[AudioChunk]:
            """One talker step fed `reply`; the code it chose goes to token2wav."""
            nonlocal code_logits, talker_done
            if code_logits is None:
                code_logits = self.talker.start(bos_embed, reply)
            else:
                code_logits = self.talker.step(codes[-1], reply)
            code = talk.choose(code_logits, self.talker.penalty_history())
            if code in C.TALKER_EOS_CODES or len(codes) + 1 >= settings.talker_max_new_tokens:
                talker_done = True
                if code not in C.TALKER_EOS_CODES:
                    codes.append(code)
                    yield from audio_events(speech.feed([code]))
                return
            codes.append(code)
            yield from audio_events(speech.feed([code]))

        settled = False

        def settle() -> None:
            """Leaves the conversation consistent, also when the consumer stops early (a closed tab)."""
            nonlocal settled
            if settled:
                return
            settled = True
            # A token chosen but never fed starts the next turn (unless it is <|im_end|>, which the next
            # turn's text brings itself). An interrupt can land after the last token was fed: then none is.
            self._closing = [t for t in tokens[fed:] if t != C.IM_END_ID]
            self._records.append(Record("answer", list(tokens), self.thinker.next_position - answer_start))
            if speaking:
                self.talker.end_answer()

        try:
            while True:
                if self._interrupt.is_set():
                    interrupted = True
                    break
                token = think.choose(logits, history)
                tokens.append(token)
                if timings.first_text is None:
                    timings.first_text = time.perf_counter() - started
                delta = text.add(token)
                if delta:
                    yield TextDelta(delta)
                if token == C.IM_END_ID or len(tokens) >= settings.max_new_tokens:
                    break
                logits, state = self.thinker.step(token)
                fed += 1
                history = torch.cat([history, torch.tensor([[token]], device=device)], dim=1)
                if not talker_done:
                    yield from talk_step(state)

            if speaking and not interrupted:
                # The thinker is done: the talker reads text EOS once, then text PAD until it ends.
                reply = text_eos
                while not talker_done and code_logits is not None and not self._interrupt.is_set():
                    yield from talk_step(reply)
                    reply = text_pad
                yield from audio_events(speech.flush())
        finally:
            settle()
        timings.total = time.perf_counter() - started
        timings.tokens, timings.codes = len(tokens), len(codes)
        answer = text.tokenizer.decode(tokens, skip_special_tokens=True)
        yield AnswerDone(answer, tokens, codes, timings, interrupted, think.margins, talk.margins)
