"""One browser tab's live conversation: what it hears and sees, when a turn ends, and what the page shows.

Gradio's handlers call in from their own threads and only buffer: `hear` (a microphone chunk), `see` (a
webcam frame), `send` (typed text and uploads), `stop`, `clear`, `close`. The model work is submitted as
jobs to the one `ModelWorker`, which alone touches this tab's `OmniSession`:

    microphone -> 16 kHz -> TurnDetector --speech confirmed--> each 2 s of audio (and its frames) prefilled
                                         --turn ended-------> rest prefilled, answer decoded and streamed
    answer -> chat text, PlayerFeed (speech), PlaybackClock (what has been heard), timings

Speech that starts while the assistant answers or is still playing cuts in (barge-in): generation and
playback stop, the answer is kept as far as it was heard, and the new speech is the next turn.

The page's view (chat, player feed, timings) is kept here; `follow` yields it to the one Gradio event
that writes those components, whenever it changes.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image as PILImage

from model import constants as C
from model.conversation import Part, Text
from model.live_input import SAMPLES_PER_WINDOW
from model.limits import UserInputError
from model.sampling import Sampling
from model.session import AnswerDone, AnswerSettings, AudioChunk, ContextTrimmed, OmniSession, Record, TextDelta, Timings
from omni_demo import gpu
from omni_demo.capture import MicResampler, camera_frame
from omni_demo.message import parts_from_message
from omni_demo.playback import PlaybackClock, PlayerFeed, samples_seconds
from omni_demo.timings import TurnTiming
from omni_demo.turns import SpeechConfirmed, SpeechStarted, TurnDetector, TurnDiscarded, TurnEnded, TurnSettings
from omni_demo.worker import ModelWorker

log = logging.getLogger(__name__)

# When an answer is cut off before its speech was complete, how much of its text was heard is estimated
# from the time heard at a typical speaking rate (English speech runs at about 2.5 words, 3 tokens, a second).
SPOKEN_TOKENS_PER_SECOND = 3.0
PREROLL_KEEP_SECONDS = 1.0  # microphone audio kept while nobody speaks, for the turn's pre-roll
THUMBNAIL_SIZE = (160, 120)
FIRST_CHUNK_MEL_FRAMES = 24  # one DiT block
# An answer still running this long after the user's turn ended is stopped: one tab cannot hold the model
# forever (a long answer on a slow GPU, a runaway repetition).
TURN_TIMEOUT_S = 300.0


@dataclass
class ChatSettings:
    """What the page's controls set for this tab."""

    voice: str = "Chelsie"
    text_only: bool = False
    system_prompt: str = C.AUDIO_SYSTEM_PROMPT
    temperature: float = 0.0  # 0: greedy, the checkpoint's default
    max_new_tokens: int = 256
    silence_seconds: float = TurnSettings.silence_seconds
    seed: int | None = None  # fixes the sampling and the vocoder's noise: the same question, the same speech

    def answer_settings(self) -> AnswerSettings:
        thinker = Sampling() if self.temperature <= 0 else Sampling(greedy=False, temperature=self.temperature)
        return AnswerSettings(
            voice=self.voice,
            text_only=self.text_only,
            max_new_tokens=self.max_new_tokens,
            thinker=thinker,
            seed=self.seed,
            noise_seed=self.seed,
            # The first speech after 24 codes instead of 36, with a third less DiT work for it; its audio is
            # within the tolerance measured in docs/performance.md (the engine's default keeps 48 frames,
            # which decodes a short answer exactly as transformers does).
            first_chunk_frames=FIRST_CHUNK_MEL_FRAMES,
        )


@dataclass
class HeardTurn:
    """The user's voice turn being heard: its audio from the pre-roll on, and its camera frames."""

    start: int  # stream sample where the turn begins
    audio: list[np.ndarray] = field(default_factory=list)  # 16 kHz mono float32
    samples: int = 0
    frames: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (RGB frame, seconds into the turn)
    confirmed: bool = False
    sent_samples: int = 0  # what of it the model has been given
    sent_chunks: int = 0  # `unsent` always takes every chunk there is, so what was sent is whole chunks
    sent_frames: int = 0

    def add(self, samples: np.ndarray) -> None:
        self.audio.append(samples)
        self.samples += len(samples)

    def unsent(self) -> tuple[np.ndarray, list]:
        new = self.audio[self.sent_chunks :]
        audio = np.concatenate(new) if new else np.zeros(0, np.float32)  # not the whole turn again each time
        frames = self.frames[self.sent_frames :]
        self.sent_samples, self.sent_chunks, self.sent_frames = self.samples, len(self.audio), len(self.frames)
        return audio, frames


@dataclass
class Answer:
    """One answer: how it is played, whether it was cut off, and what it said."""

    timing: TurnTiming
    settings: AnswerSettings
    feed: PlayerFeed
    clock: PlaybackClock = field(default_factory=PlaybackClock)
    message: dict | None = None  # its text in the chat
    finished: bool = False
    stop_requested: bool = False
    heard_at_stop: float | None = None  # seconds of speech heard when the user cut in
    timed_out: bool = False
    text: str = ""
    chunks: list[np.ndarray] = field(default_factory=list)
    done: AnswerDone | None = None
    tokens: list[int] = field(default_factory=list)
    speech_complete: bool = False  # the talker finished: all of the answer exists as audio
    clip: Path | None = None
    turn: HeardTurn | None = None  # what it answers: a voice turn, or typed/uploaded parts
    parts: list[Part] | None = None
    history_start: int | None = None  # the conversation's records before this turn (to drop it if it fails)

    @property
    def text_only(self) -> bool:
        return self.settings.text_only


def heard_tokens(answer: Answer, heard_seconds: float) -> int:
    """How many of the answer's tokens the user heard before cutting in."""
    if answer.text_only:
        return len(answer.tokens)
    audio_seconds = answer.timing.audio_seconds
    if answer.speech_complete and audio_seconds > 0:
        return math.ceil(len(answer.tokens) * min(1.0, heard_seconds / audio_seconds))
    return min(len(answer.tokens), math.ceil(heard_seconds * SPOKEN_TOKENS_PER_SECOND))


@dataclass
class View:
    """What the page shows for this tab."""

    chat: list[dict]
    player: str
    status: str
    timings: list[TurnTiming]


class LiveSession:
    def __init__(self, key: str, loaded, worker: ModelWorker, vad=None, zero_gpu: bool = False,
                 turn_timeout_s: float = TURN_TIMEOUT_S, settings: ChatSettings | None = None):
        self.key = key
        self.turn_timeout_s = turn_timeout_s
        self.loaded = loaded
        self.worker = worker
        # On ZeroGPU the model runs only inside one GPU call per turn, made by `follow` (see omni_demo/gpu.py);
        # the conversation lives here as its history, not as caches.
        self.zero_gpu = zero_gpu
        self._history: list[Record] = []
        self.settings = settings or ChatSettings()
        if self.settings.voice not in loaded.voices:  # a checkpoint with other voices
            self.settings = replace(self.settings, voice=loaded.voice_names[0])
        self.directory = Path(tempfile.mkdtemp(prefix="omni-demo-session-"))
        self._engine: OmniSession | None = None  # created and used on the worker thread only
        self._resampler = MicResampler()
        self._detector = TurnDetector(vad, TurnSettings(silence_seconds=self.settings.silence_seconds))
        self._recent: deque[tuple[int, np.ndarray]] = deque()  # (first sample, audio) while nobody speaks
        self._samples_in = 0  # the microphone stream's 16 kHz sample clock
        self._turn: HeardTurn | None = None
        self._latest_frame: tuple[np.ndarray, float] | None = None  # (frame, time.monotonic())
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.version = 0
        self.closed = False
        # The view.
        self.chat: list[dict] = []
        self.timings: list[TurnTiming] = []
        self.answer: Answer | None = None  # the answer in flight, or the last one
        self._answers = 0

    @property
    def hearing(self) -> bool:
        """The user is speaking (a turn is being heard)."""
        return self._turn is not None

    @property
    def answering(self) -> bool:
        return self.answer is not None and not self.answer.finished

    def _playing(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.answer is not None and self.answer.clock.playing_until() > now

    # ------------------------------------------------------------------ handlers (any thread)

    def hear(self, rate: int, samples: np.ndarray) -> bool:
        """A microphone chunk. Returns True when it ended the user's turn (an answer has started)."""
        with self._lock:  # Gradio may run two chunks of one stream at once: keep them in order
            audio = self._resampler(rate, samples)
            if self.closed or not len(audio):
                return False
            first = self._samples_in
            self._samples_in += len(audio)
            if self._turn is not None:
                self._turn.add(audio)
            else:
                self._recent.append((first, audio))
                keep_from = first - PREROLL_KEEP_SECONDS * C.INPUT_SAMPLE_RATE
                while self._recent and self._recent[0][0] + len(self._recent[0][1]) < keep_from:
                    self._recent.popleft()
            ended = False
            for event in self._detector.feed(audio):
                if isinstance(event, SpeechStarted):
                    self._begin_turn(event.turn_start)
                elif isinstance(event, SpeechConfirmed) and self._turn is not None:
                    self._turn.confirmed = True
                    self._cut_in()
                elif isinstance(event, TurnEnded) and self._turn is not None:
                    self._end_turn(event)
                    ended = True
                elif isinstance(event, TurnDiscarded):
                    self._turn = None  # a cough or a click: never given to the model
            self._send_ready_audio()
            return ended

    def see(self, frame: np.ndarray) -> None:
        """A webcam frame (RGB). Kept at the model's 2 fps within the user's turn."""
        frame = camera_frame(frame)
        with self._lock:
            if self.closed:
                return
            self._latest_frame = (frame, time.monotonic())
            turn = self._turn
            if turn is None:
                return
            seconds = max(0.0, (self._samples_in - turn.start) / C.INPUT_SAMPLE_RATE)
            if turn.frames and seconds < turn.frames[-1][1] + 1 / C.VIDEO_FPS - 1e-6:
                return
            turn.frames.append((frame, seconds))

    def send(self, text: str, files: list[str]) -> str | None:
        """A typed message and/or uploads. Returns a message for the user if it was refused."""
        try:
            parts: list[Part] = parts_from_message(text or "", files)
        except UserInputError as error:
            with self._lock:
                if files:  # a file that cannot be used: say so in the chat, where the upload would have been
                    self._say_error(str(error))
            return str(error)
        with self._lock:
            if self._turn is not None and self._turn.confirmed:
                return "You are speaking: the typed message was not sent. Send it once you have finished."
            self._turn = None
            self._detector.reset()
            self._cut_in()
            for path in files:
                self.chat.append({"role": "user", "content": {"path": path}})
            if any(isinstance(p, Text) for p in parts):
                self.chat.append({"role": "user", "content": parts[-1].text})
            timing = TurnTiming(len(self.timings) + 1, "typed", time.time())
            self._start_answer(timing, parts=parts)
        return None

    def stop(self) -> None:
        """The Stop button: like cutting in, without a new turn."""
        with self._lock:
            self._cut_in()

    def clear(self) -> None:
        with self._lock:
            self._cut_in()
            self._turn = None
            self._detector.reset()
            self.chat, self.timings, self._history = [], [], []
            self.worker.submit(self.key, self._clear_job())
            self._bump()

    def update(self, **settings) -> None:
        """Settings from the page's controls; a new system prompt is applied to the conversation so far."""
        with self._lock:
            old = self.settings
            self.settings = replace(old, **settings)
            if self.settings.silence_seconds != old.silence_seconds:
                self._detector.settings = TurnSettings(silence_seconds=self.settings.silence_seconds)
            if self.settings.system_prompt != old.system_prompt and not self.zero_gpu:
                self.worker.submit(self.key, self._system_prompt_job(self.settings.system_prompt), self._failed)

    def close(self) -> None:
        """The tab is gone: stop its work and free its memory and files."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._engine is not None:
                self._engine.interrupt()
            self.worker.cancel(self.key)
            self._turn, self._recent, self._latest_frame = None, deque(), None
            self._bump()
        shutil.rmtree(self.directory, ignore_errors=True)

    def follow(self, poll_seconds: float = 0.25) -> Iterator[View]:
        """The view, each time it changes, for as long as an answer is on its way or playing."""
        seen = -1
        last = None
        while True:
            answer = self._take_zero_gpu_answer()
            if answer is not None:
                yield from self._answer_on_zero_gpu(answer)
            with self._changed:
                self._changed.wait_for(lambda: self.version != seen or self.closed, timeout=poll_seconds)
                seen = self.version
                view = self.view()
                busy = self._busy()
            if view != last:
                yield view
                last = view
            if not busy or self.closed:
                return

    def view(self) -> View:
        with self._lock:
            feed = self.answer.feed.text if self.answer else ""
            return View([dict(m) for m in self.chat], feed, self.status(), list(self.timings))

    def status(self) -> str:
        with self._lock:
            place = self.worker.place(self.key)
            if self.closed:
                return "Closed."
            if place:
                ahead = "1 conversation" if place == 1 else f"{place} conversations"
                return f"⏳ Waiting for the model: {ahead} ahead of you."
            if self.answering:
                return "💭 Answering…"
            if self._playing():
                return "🔊 Speaking (talk to cut in)."
            if self._turn is not None:
                return "👂 Hearing you…"
            return "🎙️ Listening." if self._samples_in else "Ready: press Record to talk, or type."

    # ------------------------------------------------------------------ turn-taking (lock held)

    def _begin_turn(self, start: int) -> None:
        turn = HeardTurn(start)
        for first, audio in self._recent:
            if first + len(audio) > start:
                turn.add(audio[max(0, start - first) :])
        self._recent.clear()
        if self._latest_frame is not None and time.monotonic() - self._latest_frame[1] < 1.0:
            turn.frames.append((self._latest_frame[0], 0.0))  # what the camera shows as the user starts
        self._turn = turn

    def _end_turn(self, event: TurnEnded) -> None:
        turn, self._turn = self._turn, None
        now = time.time()
        rate = C.INPUT_SAMPLE_RATE
        speech_end = now - (self._samples_in - event.speech_end) / rate
        index = len(self.timings) + 1
        audio = np.concatenate(turn.audio)
        clip = self.directory / f"turn-{index}-you.wav"
        soundfile.write(clip, audio, rate)
        self.chat.append({"role": "user", "content": {"path": str(clip)}})
        label = f"🎙️ {len(audio) / rate:.1f} s"
        if turn.frames:
            thumbnail = self.directory / f"turn-{index}-camera.jpg"
            PILImage.fromarray(turn.frames[0][0]).resize(THUMBNAIL_SIZE).save(thumbnail, quality=80)
            self.chat.append({"role": "user", "content": {"path": str(thumbnail)}})
            label += f" · 📷 {len(turn.frames)} frames"
        self.chat.append({"role": "user", "content": label})
        timing = TurnTiming(index, "voice", now, speech_end_wall=speech_end)
        self._start_answer(timing, turn=turn)

    def _send_ready_audio(self) -> None:
        """Gives the model each further 2 s of a confirmed turn while the user is still speaking."""
        turn = self._turn
        if not self.zero_gpu and turn is not None and turn.confirmed and turn.samples - turn.sent_samples >= SAMPLES_PER_WINDOW:
            audio, frames = turn.unsent()
            self.worker.submit(self.key, self._prefill_job(audio, frames), self._failed)

    def _cut_in(self) -> None:
        """Stops the answer in flight or still playing; what the user heard of it is kept."""
        now, answer = time.monotonic(), self.answer
        if self.answering and not answer.stop_requested:
            answer.stop_requested = True
            answer.heard_at_stop = answer.clock.stop(now)
            if self._engine is not None:
                self._engine.interrupt()
        elif self._playing(now):
            self.worker.submit(self.key, self._keep_heard_job(answer, answer.clock.stop(now)), self._failed)
        else:
            return
        answer.feed.stop()
        self._bump()

    def _start_answer(self, timing: TurnTiming, turn: HeardTurn | None = None, parts: list[Part] | None = None) -> None:
        self._answers += 1
        answer = Answer(timing, self.settings.answer_settings(), PlayerFeed(self._answers), turn=turn, parts=parts)
        self.answer = answer
        if not self.zero_gpu:  # on ZeroGPU, `follow` runs it in a GPU call
            self.worker.submit(self.key, self._answer_job(answer), lambda error: self._failed(error, answer))
        self._bump()

    def _say_error(self, message: str) -> None:
        self.chat.append({"role": "assistant", "content": message, "metadata": {"title": "⚠️ Could not answer"}})
        self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()

    def _busy(self) -> bool:
        return self.answering or self._playing()

    # ------------------------------------------------------------------ model jobs (the worker's thread)

    def _engine_ready(self) -> OmniSession:
        if self._engine is None:
            self._engine = OmniSession(self.loaded, system_prompt=self.settings.system_prompt)
        return self._engine

    def _prefill_job(self, audio: np.ndarray, frames: list) -> Iterator[None]:
        self._engine_ready().feed(audio, frames)
        yield

    def _answer_job(self, answer: Answer) -> Iterator[None]:
        engine = self._engine_ready()
        answer.history_start = len(engine.history)
        if answer.turn is not None:
            with self._lock:
                audio, frames = answer.turn.unsent()
            engine.feed(audio, frames)
            yield
            engine.end_user_turn()
        else:
            engine.add_user_turn(*answer.parts)
        self._open_answer(answer)
        events = engine.respond(answer.settings)
        try:
            for event in events:
                self._show(answer, event)
                if answer.stop_requested or self.closed or self._overdue(answer):
                    engine.interrupt()
                yield
        finally:
            events.close()  # leaves the engine consistent even if this job is closed early (a closed tab)
        self._close_answer(answer)

    def _overdue(self, answer: Answer) -> bool:
        if not answer.timed_out and time.time() - answer.timing.turn_end_wall > self.turn_timeout_s:
            answer.timed_out = True
        return answer.timed_out

    def _open_answer(self, answer: Answer) -> None:
        with self._lock:
            answer.message = {"role": "assistant", "content": ""}
            self.chat.append(answer.message)
            self._bump()

    def _show(self, answer: Answer, event) -> None:
        """One event of the answer into the page's view."""
        timing = answer.timing
        with self._lock:
            elapsed = time.time() - timing.turn_end_wall
            if isinstance(event, TextDelta):
                answer.text += event.text
                answer.message["content"] = answer.text
                timing.first_text = timing.first_text if timing.first_text is not None else elapsed
            elif isinstance(event, AudioChunk):
                answer.feed.add(event.samples)
                answer.clock.add(samples_seconds(event.samples))
                answer.chunks.append(event.samples)
                timing.first_audio = timing.first_audio if timing.first_audio is not None else elapsed
            elif isinstance(event, ContextTrimmed):
                notice = {"role": "assistant", "content": event.message, "metadata": {"title": "ℹ️ Earlier turns dropped"}}
                self.chat.insert(self.chat.index(answer.message), notice)
            elif isinstance(event, AnswerDone):
                answer.done = event
            self._bump()

    def _close_answer(self, answer: Answer) -> None:
        """The answer is complete (or was cut off): its timings, its clip, and what of it was heard."""
        timing, done = answer.timing, answer.done
        with self._lock:
            timing.total = time.time() - timing.turn_end_wall
            timing.audio_seconds = sum(len(c) for c in answer.chunks) / C.OUTPUT_SAMPLE_RATE
            timing.interrupted = done.interrupted or answer.stop_requested
            self.timings.append(timing)
            answer.feed.end()
            answer.tokens = done.tokens
            answer.speech_complete = not done.interrupted and not answer.text_only
            if answer.chunks:
                answer.clip = self.directory / f"turn-{timing.index}-answer.wav"
                soundfile.write(answer.clip, np.concatenate(answer.chunks), C.OUTPUT_SAMPLE_RATE)
            heard = answer.heard_at_stop
        if heard is not None:
            self._keep_heard(answer, heard)
        with self._lock:
            if answer.clip is not None and any(m is answer.message for m in self.chat):  # not cleared since
                self.chat.append({"role": "assistant", "content": {"path": str(answer.clip)}})
            if answer.timed_out:
                self.chat.append({"role": "assistant", "metadata": {"title": "⏱️ Stopped"},
                                  "content": f"This answer ran past the {self.turn_timeout_s:.0f} s limit for one "
                                             "turn and was stopped; what it said so far is kept."})
            answer.finished = True
            self._bump()

    def _keep_heard(self, answer: Answer, heard_seconds: float) -> None:
        """Cuts the answer, in the model's memory and in the chat, to what the user heard."""
        keep = heard_tokens(answer, heard_seconds)
        self._forget_unheard(keep)
        kept = self.loaded.processor.tokenizer.decode(answer.tokens[:keep], skip_special_tokens=True)
        with self._lock:
            answer.message["content"] = kept.rstrip() + " …"
            answer.message["metadata"] = {"title": f"✋ Interrupted after {heard_seconds:.1f} s"}
            if answer.clip is not None and answer.clip.exists():
                audio, rate = soundfile.read(answer.clip, dtype="float32")
                soundfile.write(answer.clip, audio[: int(heard_seconds * rate)], rate)
            self._bump()

    def _forget_unheard(self, keep: int) -> None:
        if self.zero_gpu:
            with self._lock:
                if self._history and self._history[-1].kind == "answer":
                    self._history[-1] = Record("answer", self._history[-1].payload[:keep])
        elif self._engine is not None:
            self._engine.keep_answer(keep)

    # ------------------------------------------------------------------ ZeroGPU (a Gradio handler's thread)

    def _take_zero_gpu_answer(self) -> Answer | None:
        with self._lock:
            answer = self.answer
            if not self.zero_gpu or answer is None or answer.finished or answer.message is not None:
                return None
            answer.message = {}  # taken: `_open_answer` fills it
            return answer

    def _answer_on_zero_gpu(self, answer: Answer) -> Iterator[View]:
        with self._lock:
            audio, frames = answer.turn.unsent() if answer.turn is not None else (None, [])
            request = gpu.TurnRequest(list(self._history), self.settings.system_prompt, answer.settings,
                                      audio, frames, answer.parts)
        self._open_answer(answer)
        yield self.view()
        calls = gpu.run_turn(request)
        try:
            for item in calls:
                if isinstance(item, list):
                    with self._lock:
                        self._history = item
                    continue
                self._show(answer, item)
                yield self.view()
                if answer.stop_requested or self.closed or self._overdue(answer):
                    break  # closing the call cancels it on the GPU
        except Exception as error:  # noqa: BLE001 - the session goes on without this turn
            log.exception("ZeroGPU turn failed")
            self._failed(error)
            return
        finally:
            calls.close()
        if answer.done is None:  # cut off: the call's history never came back; keep what was shown
            tokens = self.loaded.processor.tokenizer(answer.text).input_ids
            turn = Record("user", answer.parts) if answer.parts is not None else Record("live", (audio, [f for f, _ in frames]))
            with self._lock:
                self._history = [*request.history, turn, Record("answer", tokens)]
            answer.done = AnswerDone(answer.text, tokens, [], Timings(), interrupted=True)
        self._close_answer(answer)
        yield self.view()

    def _keep_heard_job(self, answer: Answer, heard_seconds: float) -> Iterator[None]:
        self._keep_heard(answer, heard_seconds)
        yield

    def _clear_job(self) -> Iterator[None]:
        self._engine = None  # a fresh conversation; the old caches are freed
        for path in self.directory.iterdir():
            path.unlink(missing_ok=True)
        yield

    def _system_prompt_job(self, system_prompt: str) -> Iterator[None]:
        engine = self._engine_ready()
        engine.system_prompt = system_prompt
        engine.restore(engine.history)
        yield

    def _failed(self, error: BaseException, answer: Answer | None = None) -> None:
        """A model job raised: the turn is lost, the conversation before it and the session go on."""
        if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if isinstance(error, ValueError):  # the input was refused (too long for the model, ...)
            message = str(error)
        else:
            message = f"The model failed on this turn ({type(error).__name__}). Your conversation is kept; try again."
        self.worker.cancel(self.key)  # the rest of the failed turn's jobs
        if self._engine is not None:
            history = self._engine.history
            if answer is not None and answer.history_start is not None:
                history = history[: answer.history_start]  # the failed turn, its question and any answer
            while history and history[-1].kind != "answer":
                history.pop()  # a turn that was being prefilled: it has no answer and is not kept
            try:
                self._engine.restore(history)
            except Exception:  # noqa: BLE001 - start afresh rather than stay broken
                log.exception("could not rebuild the conversation; starting a new one")
                self._engine = None
        with self._lock:
            if self.answer is not None:
                self.answer.finished = True
                self.answer.feed.stop()
            self._say_error(message)
