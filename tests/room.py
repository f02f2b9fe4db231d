"""A laptop in a room, for the echo tests: its speakers play what the page plays, and its microphone hears
that through the room (a delay, an impulse response, a level relative to the user's voice) with the user's
voice and some noise, in real time, chunk by chunk as the browser sends it.

The room knows nothing of omni_demo/echo.py: it plays each answer's chunks when the server's copy of the
player's clock says the page plays them, resampled here in its own way (linear interpolation), and it adds
the delays the real path has (network, audio output, sound through air, the way back).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile

from model import constants as C
from model.engine.events import AudioChunk
from omni_demo.capture import MicResampler
from omni_demo.live import LiveSession
from omni_demo.view import TabView

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RATE = C.INPUT_SAMPLE_RATE
CHUNK_SECONDS = 0.1
RIR_SECONDS = 0.25


def user_voice() -> np.ndarray:
    """The user's spoken question, 16 kHz float32 (about 2.9 s)."""
    samples, rate = soundfile.read(ASSETS / "question.wav", dtype="float32")
    assert rate == RATE
    return samples


def assistant_voice() -> np.ndarray:
    """A recorded voice in the answers' place, 24 kHz float32 (assets/answer_voice.wav, about 9 s)."""
    samples, rate = soundfile.read(ASSETS / "answer_voice.wav", dtype="float32")
    return MicResampler(C.OUTPUT_SAMPLE_RATE)(rate, samples)


def speak_with_a_voice(monkeypatch) -> None:
    """Every answer's speech becomes the recorded voice, chunk for chunk as long as the model made it. The
    tiny model's random weights make noise, which no voice detector takes for speech (its Silero
    probability stays under 0.01), so its echo could never fool one; a real model speaks."""
    voice = assistant_voice()
    spoken: dict[int, int] = {}  # answer -> samples of the voice used
    show = TabView.show

    def show_voice(view, answer, event, *args, **kwargs):
        if isinstance(event, AudioChunk):
            at = spoken.get(id(answer), 0)
            samples = np.resize(np.roll(voice, -at), len(event.samples)).astype(np.float32)
            spoken[id(answer)] = (at + len(samples)) % len(voice)
            event = replace(event, samples=samples)
        return show(view, answer, event, *args, **kwargs)

    monkeypatch.setattr(TabView, "show", show_voice)


def impulse_response(seed: int) -> np.ndarray:
    """A small room's: the direct sound, then reflections that die away (RT60 about 0.3 s); unit energy."""
    rng = np.random.default_rng(seed)
    length = round(RIR_SECONDS * RATE)
    decay = np.exp(-6.9 * np.arange(length) / (0.3 * RATE))  # -60 dB at 0.3 s
    response = rng.standard_normal(length) * decay * (rng.random(length) < 0.05) * 0.3
    response[0] = 1.0
    return (response / np.sqrt(np.sum(response**2))).astype(np.float32)


class Room:
    def __init__(self, live: LiveSession, delay: float, level_db: float | None, noise_db: float = -45.0,
                 seed: int = 0):
        """`delay`: from when the server's clock says a sample plays to when the microphone's chunk with its
        echo reaches the server; `level_db`: the echo's loudness against the user's voice (None: no echo,
        headphones). `noise_db`: the room's noise against the user's voice."""
        self.live = live
        self.delay = delay
        self.response = impulse_response(seed)
        voice_rms = _rms(assistant_voice())
        self.user_rms = _rms(user_voice())
        self.gain = 0.0 if level_db is None else self.user_rms / voice_rms * 10 ** (level_db / 20)
        self.noise = self.user_rms * 10 ** (noise_db / 20)
        self.rng = np.random.default_rng(seed)
        self.start = time.monotonic()
        self.samples = 0  # the microphone's clock
        self.answers: list = []  # every answer the page has played
        self.echo = np.zeros(0, np.float32)  # what the microphone got of the speakers, for the figures
        self.sent = np.zeros(0, np.float32)  # all it sent
        self.stall: tuple[float, float] | None = None  # (at, seconds): see `stall_once`

    def stall_once(self, at: float, seconds: float) -> None:
        """The microphone's stream stalls (a network or GC pause) when `at` seconds of it have been sent: for
        `seconds` nothing comes, then the chunks captured meanwhile all come at once."""
        self.stall = (at, seconds)

    def speakers(self, start: float, count: int) -> np.ndarray:
        """What the speakers emit from `start` (time.monotonic()) on, `count` samples."""
        with self.live.view.lock:
            answer = self.live.view.answer
            if answer is not None and all(answer is not seen for seen in self.answers):
                self.answers.append(answer)
            playing = [(list(a.chunks), list(a.clock.starts), a.clock.stopped_at) for a in self.answers]
        return emitted(playing, start, count)

    def hear(self, seconds: float, user: np.ndarray | None = None, user_at: float = 0.0,
             after_each=lambda: None) -> None:
        """Runs the microphone for `seconds` in real time; `user` (16 kHz) is spoken from `user_at` seconds
        on. `after_each` is called after each chunk is handed to the session."""
        for _ in range(round(seconds / CHUNK_SECONDS)):
            count = round(CHUNK_SECONDS * RATE)
            first = self.samples
            captured = self.start + (first + count) / RATE  # when the chunk's last sample is in
            if self.stall is not None and self.now() >= self.stall[0]:
                time.sleep(self.stall[1])
                self.stall = None
            wait = captured - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            # The echo of what played `delay` earlier, through the room's response.
            tail = len(self.response) - 1
            played = self.speakers(self.start + first / RATE - self.delay - tail / RATE, count + tail)
            echo = np.convolve(played, self.response, mode="valid")[:count].astype(np.float32) * self.gain
            mic = echo + self.rng.normal(0.0, self.noise, count).astype(np.float32)
            if user is not None:
                offset = first - round(user_at * RATE)
                part = user[max(0, offset) : max(0, offset + count)]
                at = max(0, -offset)
                mic[at : at + len(part)] += part[: count - at]
            self.samples += count
            self.echo = np.concatenate([self.echo, echo])
            self.sent = np.concatenate([self.sent, mic])
            pcm = np.round(np.clip(mic, -1.0, 32767 / 32768) * 32768).astype(np.int16)
            self.live.hear(RATE, pcm)
            after_each()

    def now(self) -> float:
        """Seconds of microphone sent so far."""
        return self.samples / RATE


def emitted(playing: list[tuple[list[np.ndarray], list[float], float | None]], start: float, count: int) -> np.ndarray:
    """What speakers emit from `start` on, `count` samples at 16 kHz, playing answers given as (chunks at
    24 kHz, when each starts, when the answer was stopped or None)."""
    out = np.zeros(count, np.float32)
    times = start + np.arange(count) / RATE
    for chunks, starts, stopped in playing:
        for chunk, chunk_start in zip(chunks, starts):
            if not math.isfinite(chunk_start):
                continue
            length = len(chunk) / C.OUTPUT_SAMPLE_RATE
            end = min(chunk_start + length, stopped if stopped is not None else math.inf)
            inside = (times >= chunk_start) & (times < end)
            if inside.any():
                source = np.arange(len(chunk)) / C.OUTPUT_SAMPLE_RATE
                out[inside] += np.interp(times[inside] - chunk_start, source, chunk).astype(np.float32)
    return out


def _rms(samples: np.ndarray) -> float:
    loud = samples[np.abs(samples) > 0.01]
    return float(np.sqrt(np.mean(loud**2)))
