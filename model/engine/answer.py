"""One answer's decoding: the thinker and the talker interleaved, the talker one token behind, and
token2wav chunk by chunk, so text and speech leave as they are made.

Talker step k reads thinker token k+1's state (transformers' "thinker reply part"), so each thinker step is
followed by one talker step; once the thinker has finished, the talker reads text EOS once, then text PAD
until it ends. A chosen token is fed back to the thinker only if decoding goes on: what was fed and what
was only chosen is kept apart, so the session can close the answer exactly wherever it stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import torch

from model import constants as C
from model.engine.batched_step import DecodeStep, Step
from model.engine.events import (
    AnswerDone,
    AnswerSettings,
    AudioChunk,
    SpeechPending,
    TextDelta,
    Timings,
)
from model.engine.family import TalkerInputs, Vocoder
from model.engine.sampling import TokenChooser, residual_sampling
from model.engine.speech_worker import start_speech
from model.engine.talker_stream import TalkerStream
from model.engine.thinker_stream import ThinkerStream


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


class AnswerDecoder:
    """Decodes one answer from the logits the prompt left. `tokens` are the thinker's choices, `fed` how
    many of them are in its cache, `codes` the talker's (Qwen3-Omni: a frame of 16 codes each)."""

    def __init__(
        self,
        thinker: ThinkerStream,
        talker: TalkerStream | None,
        vocoder: Vocoder | None,
        voice: dict | None,
        tokenizer,
        settings: AnswerSettings,
        interrupt: threading.Event,
        started: float,
        talker_prompt: Callable[[], tuple[torch.Tensor, torch.Tensor] | None] = lambda: None,
        talker_inputs: TalkerInputs | None = None,
        batched: bool = False,
    ):
        """`vocoder`: the answer's StreamingToken2Wav or StreamingCode2Wav, None for a text-only answer.
        `batched`: each one-token forward is yielded as a DecodeStep, and each speech window (inline) as its
        vocoder's step, for the caller to run with other conversations' steps; otherwise run here."""
        self.thinker, self.talker, self.settings = thinker, talker, settings
        self.batched = batched
        self.interrupt = interrupt
        self.started = started
        self.talker_prompt = talker_prompt  # the conversation the talker has not read yet, for its first forward
        self.timings = Timings()
        device = thinker.device
        generator = None
        if settings.seed is not None:
            generator = torch.Generator(device=device).manual_seed(settings.seed)
        self.think = TokenChooser(
            settings.thinker,
            generator=generator,
            device=device,
            min_new_tokens=settings.min_new_tokens,
            eos=(C.IM_END_ID,),
            margins=settings.margins,
        )
        self.speaking = vocoder is not None
        self.talk = None
        if self.speaking:
            self.talk = TokenChooser(
                settings.talker,
                suppress=talker.suppressed,
                generator=generator,
                device=device,
                min_new_tokens=settings.talker_min_new_tokens,
                eos=talker.eos_codes,
                margins=settings.margins,
            )
            residual = TokenChooser(residual_sampling(settings.talker), generator=generator, device=device)
            no_history = torch.zeros((1, 0), dtype=torch.long, device=device)
            self.residual = lambda logits: residual.choose(logits, no_history)
            self._token2wav = vocoder
            self.voice = talker_inputs.voice(voice)
            self.text_eos, self.text_pad = talker_inputs.reply_end(), talker_inputs.reply_pad()
        self.text = TextStreamer(tokenizer)
        self.tokens: list[int] = []
        self.codes: list[int] = []
        self._fed_from = thinker.length
        self.interrupted = False
        self._code_logits = None
        self._talker_done = not self.speaking

    def events(self, logits: torch.Tensor) -> Iterator[TextDelta | AudioChunk | SpeechPending | Step]:
        if not self.speaking:
            yield from self._decode(logits)
            return
        self.speech = start_speech(self._token2wav, self.settings.speech_thread, windows=self.batched)
        try:
            yield from self._decode(logits)
        finally:
            self.speech.stop()  # also when the consumer stops early: no worker outlives its answer

    @torch.no_grad()
    def _decode(self, logits: torch.Tensor) -> Iterator[TextDelta | AudioChunk | SpeechPending]:
        history = torch.tensor([self.thinker.ids], device=self.thinker.device)
        while True:
            if self.interrupt.is_set():
                self.interrupted = True
                break
            token = self.think.choose(logits, history)
            self.tokens.append(token)
            if self.timings.first_text is None:
                self.timings.first_text = time.perf_counter() - self.started
            yield TextDelta(self.text.add(token), token)
            if token == C.IM_END_ID or len(self.tokens) >= self.settings.max_new_tokens:
                break
            step = self.thinker.step_request(token)
            yield from self._run(step)
            logits, state = step.result
            history = torch.cat([history, torch.tensor([[token]], device=history.device)], dim=1)
            if not self._talker_done:
                yield from self._talk_step(state)
        if self.speaking and not self.interrupted:
            reply = self.text_eos
            while not self._talker_done and self._code_logits is not None and not self.interrupt.is_set():
                yield from self._talk_step(reply)
                reply = self.text_pad
            self.speech.finish()
            yield from self.speech.windows()
            yield from self._audio(self.speech.rest(self.interrupt))
            self.interrupted = not self.speech.ended  # cut in before the last chunk was made

    @property
    def fed(self) -> int:
        """The answer's tokens in the thinker's cache: counted there, so it holds wherever the answer was
        closed, even between a batched step's run and this answer's next turn."""
        return self.thinker.length - self._fed_from

    def done(self) -> AnswerDone:
        timings = self.timings
        timings.total = time.perf_counter() - self.started
        timings.tokens, timings.codes = len(self.tokens), len(self.codes)
        text = self.text.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return AnswerDone(text, self.tokens, self.codes, timings, self.interrupted, self.think.margins, self.talk.margins if self.talk else [])

    def _talk_step(self, reply: torch.Tensor) -> Iterator[AudioChunk]:
        """One talker step fed `reply`; the code it chose goes to token2wav."""
        if self._code_logits is None:
            self._code_logits = self.talker.start(self.voice, reply, self.talker_prompt())
        else:
            step = self.talker.step_request(self.codes[-1], reply)
            yield from self._run(step)
            self._code_logits = step.result
        code = self.talk.choose(self._code_logits, self.talker.penalty_history())
        ends = code in self.talker.eos_codes or len(self.codes) + 1 >= self.settings.talker_max_new_tokens
        self._talker_done = ends
        if code not in self.talker.eos_codes:
            request = self.talker.frame_request(code, self.residual)
            if request is None:
                frame = self.talker.frame(code)
            else:
                yield from self._run(request)
                frame = request.result
            self.codes.append(frame)
            self.speech.feed([frame])
            yield from self.speech.windows()
        yield from self._audio(self.speech.ready())

    def _run(self, step: Step) -> Iterator[Step]:
        if not self.batched:
            step.run()
            return
        yield step  # the model thread's scheduler runs it (batched_step.run_steps) before this goes on
        if not step.ran:
            raise RuntimeError("a batched answer was resumed before its step ran")

    def _audio(self, chunks) -> Iterator[AudioChunk | SpeechPending]:
        for samples in chunks:
            if samples is None:  # the speech thread has nothing new yet
                yield SpeechPending()
                continue
            if self.timings.first_audio is None:
                self.timings.first_audio = time.perf_counter() - self.started
            self.timings.audio_seconds += len(samples) / C.OUTPUT_SAMPLE_RATE
            yield AudioChunk(samples)
