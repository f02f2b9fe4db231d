"""One browser tab's live conversation: it wires the tab's three parts together, each with its own thread.

    handlers (Gradio's threads)    hear / see / send / stop / clear / update / close
        -> EchoCanceller (echo.py) the microphone without the answer's own speech, which the page plays
        -> Listener (listener.py)  microphone and camera -> the user's turns; no model
        -> jobs for TabModel (tab_model.py), run on the one ModelWorker thread: the only owner of the engine
              feed: each settled 2 s window prefilled while the user speaks
              answer: the rest of the turn, then the answer streamed
    TabView (view.py)              what the page shows; everyone updates it under its lock, memory only
    follow (the page's one writer) yields a View each time the version changes

Speech that resumes soon after a voice turn ended, before any of its answer was heard, continues that turn
(the answer is retracted, the engine takes the turn's end back). Speech once the answer has begun to play
cuts in (barge-in): generation and playback stop, the answer is kept as far as it was heard, and the new
speech is the next turn.

On ZeroGPU the model runs only inside one GPU call per turn, which `follow` makes (omni_demo/gpu.py);
there a `ZeroGpuModel` keeps the conversation as its history instead of caches.
"""

from __future__ import annotations

import functools
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image as PILImage

from model import constants as C
from model.engine.encode import TurnMedia, turn_media
from model.engine.events import AnswerSettings
from model.engine.sampling import TALKER_DEFAULT, Sampling
from model.inputs.conversation import Part, Text
from model.inputs.limits import UserInputError, live_turn_seconds
from model.inputs.message import parts_from_message
from omni_demo.cache_budget import CacheBudget
from omni_demo.capture import CAMERA_MAX_PIXELS, MicResampler
from omni_demo.echo import EchoCanceller, Played
from omni_demo.gpu import ZeroGpuModel
from omni_demo.listener import HeardTurn, Listener, TurnLimit
from omni_demo.playback import PlayerFeed
from omni_demo.playout import PlaybackClock, SpeechPace
from omni_demo.remote_session import ReplicaModel
from omni_demo.replicas import Replicas
from omni_demo.tab_model import TabModel
from omni_demo.timings import TurnTiming
from omni_demo.turns import SpeechConfirmed, SpeechResumed, TurnEnded, TurnPaused, TurnSettings
from omni_demo.view import Answer, TabView, View
from omni_demo.worker import ModelWorker

THUMBNAIL_SIZE = (160, 120)
# A confirmed turn is handed to the model in pieces of at least this much audio: often enough that a window
# is prefilled soon after it is settled, seldom enough that the jobs cost nothing.
FEED_SECONDS = 0.5
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
    # Speech that resumes this long after the turn ended, before any of the answer was heard, continues the
    # turn: a pause inside a question does not split it.
    continue_seconds: float = 1.5
    seed: int | None = None  # fixes the sampling and the vocoder's noise: the same question, the same speech
    talker: Sampling = field(default_factory=lambda: TALKER_DEFAULT)  # the family's (model.loading.Family.talker)

    @classmethod
    def for_model(cls, loaded) -> ChatSettings:
        """The defaults of the loaded model's family: its voice, system prompt and talker sampling."""
        family = loaded.family
        return cls(voice=family.default_voice, system_prompt=family.system_prompt, talker=family.talker)

    def answer_settings(self) -> AnswerSettings:
        thinker = Sampling() if self.temperature <= 0 else Sampling(greedy=False, temperature=self.temperature)
        return AnswerSettings(
            voice=self.voice,
            text_only=self.text_only,
            max_new_tokens=self.max_new_tokens,
            thinker=thinker,
            talker=self.talker,
            seed=self.seed,
            noise_seed=self.seed,
        )


class LiveSession:
    def __init__(self, key: str, loaded, worker: ModelWorker, vad=None, zero_gpu: bool = False,
                 turn_timeout_s: float = TURN_TIMEOUT_S, settings: ChatSettings | None = None,
                 pace: SpeechPace | None = None, max_positions: int | None = None, budget: CacheBudget | None = None,
                 echo_cancel: bool = True, replicas: Replicas | None = None):
        """`pace`: the server's, shared by its tabs (one model makes everyone's speech). `max_positions`: what
        a conversation may use (default: the model's). `budget`: the caches' memory, shared by the tabs.
        `echo_cancel`: take the answer's own speech out of the microphone (echo.py). `replicas`: the model runs
        on Ray replicas, not in this process (replicas.py)."""
        self.key = key
        self.loaded = loaded
        self.worker = worker
        self.zero_gpu = zero_gpu
        self.settings = settings or ChatSettings.for_model(loaded)
        if self.settings.voice not in loaded.voices:  # a checkpoint with other voices
            self.settings = replace(self.settings, voice=loaded.voice_names[0])
        self.directory = Path(tempfile.mkdtemp(prefix="omni-demo-session-"))
        self.closed = False
        self.view = TabView(pace)
        self.listener = Listener(vad, TurnSettings(silence_seconds=self.settings.silence_seconds),
                                 turn_limit(loaded, max_positions))
        model_class = ZeroGpuModel if zero_gpu else TabModel
        if replicas is not None:
            model_class = functools.partial(ReplicaModel, replicas=replicas)
        self.model = model_class(key, loaded, self.view, self.directory, self.settings.system_prompt, turn_timeout_s,
                                 closed=lambda: self.closed, max_positions=max_positions, budget=budget)
        self._mic = threading.Lock()  # one microphone chunk at a time, in order (handlers only)
        self._resampler = MicResampler()  # these two belong to the microphone's handler, under `_mic`
        self._echo = EchoCanceller() if echo_cancel else None
        self._answers = 0
        self._turns = 0  # turns on the page since it was last cleared (under the view's lock)
        self._stems = itertools.count(1)  # each turn's files: never reused, so no file of the tab is overwritten

    @property
    def turn_timeout_s(self) -> float:
        return self.model.turn_timeout_s

    @turn_timeout_s.setter
    def turn_timeout_s(self, seconds: float) -> None:
        self.model.turn_timeout_s = seconds

    @property
    def hearing(self) -> bool:
        """The user is speaking (a turn is being heard)."""
        return self.listener.hearing

    @property
    def answer(self) -> Answer | None:
        return self.view.answer

    @property
    def chat(self) -> list[dict]:
        return self.view.chat

    @property
    def timings(self) -> list[TurnTiming]:
        return self.view.timings

    @property
    def busy(self) -> bool:
        """Something is in flight: the user speaking, an answer being made or played, model work queued."""
        return self.hearing or self.answering or self._playing() or self.worker.place(self.key) is not None

    @property
    def answering(self) -> bool:
        answer = self.view.answer
        return answer is not None and not answer.finished

    def _playing(self, now: float | None = None) -> bool:
        answer = self.view.answer
        now = time.monotonic() if now is None else now
        return answer is not None and answer.clock.playing_until() > now

    # ------------------------------------------------------------------ handlers (any thread)

    def hear(self, rate: int, samples: np.ndarray) -> bool:
        """A microphone chunk. Returns True when it ended the user's turn (an answer has started)."""
        with self._mic:
            if self.closed:
                return False
            audio = self._resampler(rate, samples)
            min_speech = None
            if self._echo is not None:
                audio = self._echo.clean(audio, time.monotonic(), self._played())
                min_speech = self._echo.min_speech_seconds
            ended = False
            for event, turn in self.listener.hear(audio, min_speech):
                if isinstance(event, SpeechConfirmed) and not self._continue(turn):
                    self._cut_in()
                elif isinstance(event, TurnPaused):
                    self._prepare(event, turn)
                elif isinstance(event, SpeechResumed):
                    self._take_back(turn)
                elif isinstance(event, TurnEnded):
                    self._end_turn(event, turn)
                    ended = True
            turn = self.listener.turn
            if turn is not None and turn.confirmed and not self.zero_gpu and self._held(turn) is None:
                more = self.listener.take_unsent(turn, min_samples=int(FEED_SECONDS * C.INPUT_SAMPLE_RATE))
                if more is not None:
                    self.worker.submit(self.key, self.model.feed(*more), self.model.prefill_failed)
            return ended

    def _played(self) -> Played | None:
        """The answer the page is playing (or holding), as of now: the echo canceller's far end."""
        with self.view.lock:
            answer = self.view.answer
            if answer is None or not answer.chunks:
                return None
            return Played(answer, list(answer.chunks), list(answer.clock.starts), answer.clock.stopped_at)

    def see(self, frame: np.ndarray) -> None:
        """A webcam frame (RGB)."""
        if not self.closed:
            self.listener.see(frame)

    def send(self, text: str, files: list[str]) -> str | None:
        """A typed message and/or uploads. Returns a message for the user if it was refused."""
        try:
            parts: list[Part] = parts_from_message(text or "", files)
        except UserInputError as error:
            if files:  # a file that cannot be used: the message as sent, then why it was refused
                with self.view:
                    for path in files:
                        self.view.chat.append({"role": "user", "content": f"📎 {Path(path).name}"})
                    if (text or "").strip():
                        self.view.chat.append({"role": "user", "content": text})
                self.view.say_error(str(error))
            return str(error)
        turn = self.listener.turn
        if turn is not None and turn.confirmed:
            return "You are speaking: the typed message was not sent. Send it once you have finished."
        self.listener.forget_turn()
        self._cut_in()
        with self.view:
            for path in files:
                self.view.chat.append({"role": "user", "content": {"path": path}})
            if any(isinstance(p, Text) for p in parts):
                self.view.chat.append({"role": "user", "content": parts[-1].text})
            index = self._next_turn()
        self._start_answer(TurnTiming(index, "typed", time.time()), self._stem(index), parts=parts,
                           media=self._media(parts))
        return None

    def _media(self, parts: list[Part]) -> TurnMedia | None:
        """The parts' media through the processor, here rather than on the model's thread, where a long
        video's frames would hold every tab's answer. None on ZeroGPU (the call's own process makes them) or
        if the processor fails: the answer's job meets the error again and says so."""
        if self.zero_gpu:
            return None
        try:
            return turn_media(self.loaded.processor, parts)
        except Exception:  # noqa: BLE001 - reported by the answer, where every model error is
            return None

    def stop(self) -> None:
        """The Stop button: like cutting in, without a new turn."""
        self._cut_in()

    def clear(self) -> None:
        self._cut_in()
        self.listener.forget_turn()
        files = list(self.directory.iterdir())  # what the conversation has now: later files are the next one's
        with self.view:
            self.view.chat, self.view.timings, self._turns = [], [], 0
            self.worker.submit(self.key, self.model.clear(files))

    def update(self, **settings) -> None:
        """Settings from the page's controls; a new system prompt is applied to the conversation so far."""
        old, self.settings = self.settings, replace(self.settings, **settings)
        if self.settings.silence_seconds != old.silence_seconds:
            self.listener.set_silence(self.settings.silence_seconds)
        if self.settings.system_prompt != old.system_prompt:
            self.worker.submit(self.key, self.model.set_system_prompt(self.settings.system_prompt), self.model.recover)

    def close(self) -> None:
        """The tab is gone: stop its work and free its memory and files."""
        if self.closed:
            return
        self.closed = True
        self.model.interrupt()
        self.worker.cancel(self.key)
        self.model.close()
        self.listener.close()
        with self.view:
            pass  # wakes `follow`
        shutil.rmtree(self.directory, ignore_errors=True)

    def follow(self, poll_seconds: float = 0.25) -> Iterator[View]:
        """The view, each time it changes, for as long as an answer is on its way or playing."""
        seen, last = -1, None
        while True:
            answer = self._take_zero_gpu_answer()
            if answer is not None:
                for _ in self.model.answer(answer, None):
                    yield self.view.snapshot(self.status())
            seen = self.view.wait(seen, poll_seconds, lambda: self.closed)
            with self.view.lock:  # the view and whether more will come, as of one moment
                view = self.view.snapshot(self.status())
                busy = self.answering or self._playing()
            if view != last:
                yield view
                last = view
            if not busy or self.closed:
                return

    def status(self) -> str:
        place = self.worker.place(self.key)
        if self.closed:
            return "Closed."
        if place:
            ahead = "1 conversation" if place == 1 else f"{place} conversations"
            return f"⏳ Waiting for the model: {ahead} ahead of you."
        if self.answering and not self.view.answer.held:  # one made in the user's pause is theirs to end
            return "💭 Answering…"
        if self._playing():
            return "🔊 Speaking (talk to cut in)."
        if self.listener.hearing:
            return "👂 Hearing you…"
        return "🎙️ Listening." if self.listener.samples_in else "Ready: press Record to talk, or type."

    # ------------------------------------------------------------------ turns and answers

    def _next_turn(self) -> int:
        """A new turn's number on the page (under the view's lock): taken when the turn is made, so a message
        sent while an answer still runs gets the next one, not that answer's."""
        self._turns += 1
        return self._turns

    def _stem(self, index: int) -> str:
        return f"turn-{index}-{next(self._stems)}"

    def _held(self, turn: HeardTurn) -> Answer | None:
        """The answer being prepared in this turn's pause, held back (None: none)."""
        answer = self.view.answer
        if answer is not None and answer.held and not answer.retracted and answer.turn is turn:
            return answer
        return None

    def _prepare(self, event: TurnPaused, turn: HeardTurn) -> None:
        """The user paused: their turn is closed in the model and its answer made, held back until the pause
        ends the turn (`_end_turn` shows it) or their voice comes back (`_take_back`). What they say in the
        meantime is not given to the model until then."""
        if self.zero_gpu or turn.limit_reached:  # on ZeroGPU each answer is a GPU call of its own
            return
        if turn.index is None:
            with self.view.lock:
                turn.index = self._next_turn()
        speech_end = time.time() - (self.listener.samples_in - event.speech_end) / C.INPUT_SAMPLE_RATE
        self._start_answer(TurnTiming(turn.index, "voice", time.time(), speech_end_wall=speech_end),
                           self._stem(turn.index), turn=turn, held=True)

    def _take_back(self, turn: HeardTurn) -> None:
        """The user spoke on in their pause: the prepared answer is taken back, exactly as a turn continued
        after its end (`_continue`), and the turn goes on from where the model had it."""
        with self.view.lock:
            answer = self._held(turn)
            if answer is None:
                return
            before = (np.concatenate(turn.audio[: turn.sent_chunks]) if turn.sent_chunks else np.zeros(0, np.float32),
                      turn.frames[: turn.sent_frames])
            self.view.retract(answer)
        self.model.interrupt()
        self.worker.submit(self.key, self.model.continue_turn(before), self.model.recover)

    def _end_turn(self, event: TurnEnded, turn: HeardTurn) -> None:
        """The user's voice turn ended: its clip and thumbnail (written here, outside every lock), then the
        answer, or the one prepared in the pause is shown."""
        now = time.time()
        prepared = self._held(turn)
        if prepared is not None:  # the turn is what the model was given: the rest of the pause is silence
            turn.keep_sent()
        if turn.index is None:  # a continued turn keeps its number
            with self.view.lock:
                turn.index = self._next_turn()
        stem = self._stem(turn.index)
        clip = self.directory / f"{stem}-you.wav"
        soundfile.write(clip, turn.whole_audio(), C.INPUT_SAMPLE_RATE)
        entries = [{"role": "user", "content": {"path": str(clip)}}]
        label = f"🎙️ {turn.seconds:.1f} s"
        if turn.frames:
            thumbnail = self.directory / f"{stem}-camera.jpg"
            PILImage.fromarray(turn.frames[0][0]).resize(THUMBNAIL_SIZE).save(thumbnail, quality=80)
            entries.append({"role": "user", "content": {"path": str(thumbnail)}})
            label += f" · 📷 {len(turn.frames)} frames"
        entries.append({"role": "user", "content": label})
        if event.limit_reached:
            entries.append({"role": "assistant", "metadata": {"title": "ℹ️ Turn ended"}, "content":
                            f"Your turn reached the longest the model can take in one go ({turn.seconds:.0f} s), so "
                            "it was ended there and is answered now. Pause now and then to let the model answer."})
        with self.view:
            self.view.chat.extend(entries)
            turn.entries = entries
        speech_end = now - (self.listener.samples_in - event.speech_end) / C.INPUT_SAMPLE_RATE
        if prepared is not None:
            self.view.release(prepared, now, speech_end)
            return
        self._start_answer(TurnTiming(turn.index, "voice", now, speech_end_wall=speech_end), stem, turn=turn)

    def _start_answer(self, timing: TurnTiming, stem: str, turn: HeardTurn | None = None,
                      parts: list[Part] | None = None, media: TurnMedia | None = None, held: bool = False) -> None:
        rest = self.listener.take_unsent(turn) if turn is not None else None
        with self.view:
            self._answers += 1
            pace = self.view.pace.current()
            answer = Answer(timing, self.settings.answer_settings(), PlayerFeed(self._answers, pace),
                            PlaybackClock(pace), stem=stem, turn=turn, parts=parts, media=media, held=held)
            self.view.answer = answer
            if not self.zero_gpu:  # on ZeroGPU, `follow` runs it in a GPU call
                self.worker.submit(self.key, self.model.answer(answer, rest))

    def _continue(self, turn: HeardTurn) -> bool:
        """Speech confirmed soon after the last voice turn ended, none of its answer heard yet: the same turn
        goes on (its answer is retracted) rather than a new one cutting in."""
        with self.view.lock:
            answer = self.view.answer
            if answer is None or answer.turn is None or answer.retracted or answer.heard_at_stop is not None:
                return False
            if answer.turn.limit_reached or (answer.text_only and answer.finished):  # a text answer read in full
                return False
            paused = (turn.start - answer.turn.end) / C.INPUT_SAMPLE_RATE
            if paused > self.settings.continue_seconds or answer.clock.heard() > 0:
                return False
            previous = answer.turn
            before = (previous.whole_audio(), list(previous.frames))
            if not self.listener.continue_turn(previous):
                return False
            self.view.retract(answer)
        self.model.interrupt()
        self.worker.submit(self.key, self.model.continue_turn(before), self.model.recover)
        return True

    def _cut_in(self) -> None:
        """Stops the answer in flight or still playing; what the user heard of it is kept."""
        now = time.monotonic()
        with self.view.lock:
            answer = self.view.answer
            if self.answering and not answer.stop_requested:
                with self.view:
                    answer.stop_requested = True
                    answer.heard_at_stop = answer.clock.stop(now)
                    answer.feed.stop()
                self.model.interrupt()
            elif self._playing(now):
                with self.view:
                    heard = answer.clock.stop(now)
                    answer.feed.stop()
                self.worker.submit(self.key, self.model.keep_heard(answer, heard), self.model.recover)

    def _take_zero_gpu_answer(self) -> Answer | None:
        with self.view.lock:
            answer = self.view.answer
            if not self.zero_gpu or answer is None or answer.finished or answer.message is not None:
                return None
            answer.message = {}  # taken: `open_answer` fills it
            return answer


def turn_limit(loaded, max_positions: int | None = None) -> TurnLimit:
    """The longest live turn the model can answer, by `model.inputs.limits.live_turn_seconds`."""
    positions = max_positions or loaded.model.thinker.config.text_config.max_position_embeddings
    return TurnLimit(live_turn_seconds(loaded.processor, positions),
                     live_turn_seconds(loaded.processor, positions, CAMERA_MAX_PIXELS))
