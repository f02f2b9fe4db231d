"""A tab's conversation on the model's side: the one owner of its `OmniSession`.

Every public method is a job, a generator that the `ModelWorker` runs on its thread, step by step; the
handlers only submit them (omni_demo/live.py), so the engine is only ever touched from the worker's
thread. A job writes what the page shows through the tab's `TabView` (memory only, under its lock) and
writes clips to disk outside any lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile
import torch

from model import constants as C
from model.engine.batched_step import Step
from model.engine.events import SpeechPending
from model.engine.history import AnswerTurn, Record
from model.session import OmniSession
from omni_demo.cache_budget import CacheBudget
from omni_demo.timings import log_line
from omni_demo.view import Answer, TabView, heard_tokens

log = logging.getLogger(__name__)
# An answer made whole in the user's pause waits for the turn's end this long a round (the others' rounds go on).
HELD_POLL_SECONDS = 0.01
MIN_CLIP_SECONDS = 0.1  # an answer cut off before this much of it was heard keeps no clip


class TabModel:
    def __init__(self, name: str, loaded, view: TabView, directory: Path, system_prompt: str, turn_timeout_s: float,
                 closed: Callable[[], bool], max_positions: int | None = None, budget: CacheBudget | None = None):
        """`max_positions`: the positions a conversation may use (default: the model's). `budget`: the
        caches' memory, shared with the other tabs (omni_demo/cache_budget.py)."""
        self.name = name  # the tab's, for the console
        self.loaded = loaded
        self.view = view
        self.directory = directory
        self.system_prompt = system_prompt
        self.turn_timeout_s = turn_timeout_s
        self.closed = closed
        self.max_positions = max_positions
        self._engine: OmniSession | None = None
        self.budget = budget or CacheBudget(None)
        self._given_back: list[Record] | None = None  # the history of caches given back, to rebuild them from
        self._given_back_bytes = 0  # what they held
        self._reserved = 0  # the same, while they are being rebuilt
        self._answering = False
        # The live turn being heard, as it was handed over: given again after a failed prefill, so the model
        # still hears the whole turn.
        self._heard: list[tuple[np.ndarray, list]] = []
        self._heard_lost = False
        self._interrupt = threading.Event()

    def interrupt(self) -> None:
        """Stops the answer being decoded at its next step. The one call that is not a job: any thread may
        make it, and it touches no engine (the engine only watches the event)."""
        self._interrupt.set()

    def close(self) -> None:
        """The tab is gone (its caches go with this object; a replica's are freed there)."""

    def _ready(self) -> OmniSession:
        """The conversation's engine, its caches rebuilt if they were given back; others give theirs back if
        the budget needs it."""
        for _ in self._rebuilding():
            pass
        return self._engine

    def _rebuilding(self) -> Iterator[None]:
        """`_ready` as job steps: caches given back are rebuilt a turn per step, so a long conversation's
        rebuild never holds the other answers' speech for long."""
        if self._engine is None and self._given_back is not None:
            self._reserved = self._given_back_bytes  # counted as held while they are rebuilt
        self.budget.use(self)
        if self._engine is None:
            engine = OmniSession(self.loaded, system_prompt=self.system_prompt, interrupt=self._interrupt,
                                 max_positions=self.max_positions)
            if self._given_back is not None:
                try:
                    yield from engine.restoring(self._given_back)  # if it fails, the history stays for the next try
                finally:
                    self._reserved = 0
                self._given_back, self._given_back_bytes = None, 0
            self._engine = engine

    # ------------------------------------------------------------------ the caches' budget

    @property
    def idle(self) -> bool:
        """Holds caches, and no turn is being heard nor answered: they can be given back."""
        return self._engine is not None and not self._heard and not self._answering

    def cache_bytes(self) -> int:
        return self._engine.cache_bytes() if self._engine is not None else self._reserved

    def give_back(self) -> None:
        """Frees the caches; the next turn rebuilds them from the history."""
        self._given_back, self._given_back_bytes = self._engine.history, self._engine.cache_bytes()
        self._engine = None

    @property
    def history(self) -> list[Record]:
        if self._engine is not None:
            return self._engine.history
        return list(self._given_back or [])

    # ------------------------------------------------------------------ jobs

    def feed(self, audio: np.ndarray, frames: list) -> Iterator[None]:
        """More of the live turn being heard; its settled windows are prefilled."""
        yield from self._rebuilding()
        self._hear(audio, frames)
        yield

    def answer(self, answer: Answer, rest: tuple[np.ndarray, list] | None) -> Iterator[None]:
        """Ends the user's turn (the rest of a voice turn, or typed parts) and streams the answer."""
        self._answering = True
        try:
            yield from self._answer(answer, rest)
        finally:
            self._answering = False

    def _answer(self, answer: Answer, rest: tuple[np.ndarray, list] | None) -> Iterator[None]:
        try:
            yield from self._rebuilding()
        except Exception as error:  # noqa: BLE001 - the history is kept; the next turn tries again
            self.recover(error, answer)
            return
        engine = self._ready()
        history_start = len(engine.history)
        try:
            if answer.turn is not None:
                self._hear(*rest)
                yield
                self._heard = []
                engine.end_user_turn()
                if answer.retracted:  # the user is still speaking: no answer yet
                    self._close(answer)
                    return
            else:
                self._heard = []
                yield from engine.adding_user_turn(*answer.parts, media=answer.media)  # a long upload in pieces, a round each
            self.view.open_answer(answer)
            events = engine.respond(answer.settings, batched=True)
            try:
                for event in events:
                    if isinstance(event, Step):  # for the worker, to run with other answers' steps
                        yield event
                        continue
                    self.view.show(answer, event, time.time() - answer.timing.turn_end_wall)
                    if answer.stop_requested or self.closed() or self._overdue(answer):
                        engine.interrupt()
                    if isinstance(event, SpeechPending):
                        yield  # the speech thread is still at work: the other sessions go on meanwhile
            finally:
                events.close()  # leaves the engine consistent even if this job is closed early (a closed tab)
        except Exception as error:  # noqa: BLE001 - the turn is lost; the conversation before it goes on
            self.recover(error, answer, history_start)
            return
        while answer.held and not answer.retracted and not self.closed():
            time.sleep(HELD_POLL_SECONDS)  # all made in the user's pause: it ends once their turn does
            yield
        self._close(answer)

    def continue_turn(self, before: tuple[np.ndarray, list]) -> Iterator[None]:
        """The user went on with the turn that had ended (its answer retracted): the engine takes the answer
        and the turn's closing back, and the turn goes on. `before` is the turn as it was at its end, given
        again if the engine never closed it (its answer's job failed)."""
        try:
            self._ready().continue_user_turn()
            self._heard = [before]
        except RuntimeError:
            self._heard, self._heard_lost = [before], True
        yield

    def keep_heard(self, answer: Answer, heard_seconds: float) -> Iterator[None]:
        """The user cut in while the answer was still playing: keep what they heard of it."""
        self._keep_heard(answer, heard_seconds)
        yield

    def clear(self, files: list[Path]) -> Iterator[None]:
        """A fresh conversation; the old caches are freed, and the files the old one had when the user asked
        (`files`: a clip written since, while this job waited, belongs to the new one)."""
        self._engine, self._heard, self._given_back, self._given_back_bytes = None, [], None, 0
        for path in files:
            path.unlink(missing_ok=True)
        yield

    def set_system_prompt(self, system_prompt: str) -> Iterator[None]:
        self.system_prompt = system_prompt
        if self._engine is not None:
            self._engine.system_prompt = system_prompt
            self._engine.restore(self._engine.history)
            self._heard_lost = bool(self._heard)  # the restore dropped the turn being heard: give it again, whole
        yield

    def prefill_failed(self, error: BaseException) -> None:
        """A live window could not be prefilled: the caches are rebuilt and the turn is given again."""
        log.warning("prefill failed (%s); the turn will be given again", type(error).__name__)
        self._rebuild(self._without_open_turn(self.history), error)
        self._heard_lost = True

    def recover(self, error: BaseException, answer: Answer | None = None, history_start: int | None = None) -> None:
        """A job failed (an answer's: its turn is lost): the conversation before it and the session go on."""
        log.error("model job failed", exc_info=error)
        self._heard = []
        self._rebuild(self._without_open_turn(self.history[:history_start]), error)
        if answer is not None:
            with self.view:
                # The page stops playing it, so its clock stops too: nothing of it plays on, and a later Stop or
                # cut-in finds nothing to cut (the answer is not in the model's memory).
                answer.finished = answer.failed = True
                answer.feed.stop()
                answer.clock.stop()
        self.view.say_error(self.failure_message(error))

    @staticmethod
    def failure_message(error: BaseException) -> str:
        """What the user reads when a turn fails."""
        if isinstance(error, ValueError):  # the input was refused (too long for the model, an unknown voice, ...)
            return str(error)
        return f"The model failed on this turn ({type(error).__name__}). Your conversation is kept; try again."

    # ------------------------------------------------------------------ helpers

    def _hear(self, audio: np.ndarray, frames: list) -> None:
        self._heard.append((audio, frames))
        engine = self._ready()
        given = self._heard if self._heard_lost else self._heard[-1:]  # rebuilt without this turn: all again
        self._heard_lost = False
        for more_audio, more_frames in given:
            engine.feed(more_audio, more_frames)

    @staticmethod
    def _without_open_turn(history: list[Record]) -> list[Record]:
        history = list(history)
        while history and not isinstance(history[-1], AnswerTurn):
            history.pop()  # a turn that has no answer is not kept
        return history

    def _rebuild(self, history: list[Record], error: BaseException) -> None:
        if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._engine is None:
            return
        try:
            self._engine.restore(history)
        except Exception:  # noqa: BLE001 - start afresh rather than stay broken
            log.exception("could not rebuild the conversation; starting a new one")
            self._engine = None

    def _overdue(self, answer: Answer) -> bool:
        if not answer.timed_out and time.time() - answer.timing.turn_end_wall > self.turn_timeout_s:
            answer.timed_out = True
        return answer.timed_out

    def _close(self, answer: Answer) -> None:
        """The answer is complete (or was cut off): its timings, its clip, and what of it was heard."""
        speech = self.view.end_answer(answer, time.time() - answer.timing.turn_end_wall)
        if speech is not None:
            clip = self.directory / f"{answer.stem}-answer.wav"
            soundfile.write(clip, speech, C.OUTPUT_SAMPLE_RATE)
            answer.clip = clip
        if answer.heard_at_stop is not None and not answer.retracted:
            self._keep_heard(answer, answer.heard_at_stop)
        self.view.finish_answer(answer, self.turn_timeout_s)
        if not answer.retracted:
            log.info(log_line(self.name, answer.timing, len(answer.tokens)))

    def _keep_in_memory(self, keep: int) -> None:
        if self._engine is not None or self._given_back:
            self._ready().keep_answer(keep)

    def _keep_heard(self, answer: Answer, heard_seconds: float) -> None:
        """Cuts the answer, in the model's memory, in the chat and in its clip, to what the user heard."""
        if answer.failed:  # never reached the model's memory (its last answer is an earlier one): nothing to cut
            return
        keep = heard_tokens(answer, heard_seconds)
        self._keep_in_memory(keep)
        kept = self.loaded.processor.tokenizer.decode(answer.tokens[:keep], skip_special_tokens=True)
        self.view.cut_to_heard(answer, kept, heard_seconds)
        if answer.clip is not None and heard_seconds < MIN_CLIP_SECONDS:  # nothing heard: no 0:00 clip
            self.view.drop_clip(answer)
            answer.clip.unlink(missing_ok=True)
            answer.clip = None
        cut_clip(answer.clip, heard_seconds)


def cut_clip(clip: Path | None, seconds: float) -> None:
    if clip is not None and clip.exists():
        audio, rate = soundfile.read(clip, dtype="float32")
        soundfile.write(clip, audio[: int(seconds * rate)], rate)
