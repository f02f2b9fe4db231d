"""One throwaway conversation through every stage before the first visitor comes.

The first call of each stage pays one-time costs (kernel selection and allocations: on this 2-core CPU the
first live window takes twice as long as the next, on a GPU the first CUDA calls take seconds), and the
first visitor's answer would wait for them. A short live turn of microphone noise and two camera frames,
then an answer with its speech, runs the audio and vision encoders, the thinker, the talker and the vocoder
once. It is a session of its own: nothing of it stays but what the stages keep for every conversation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from model import constants as C
from model.engine.events import AnswerDone, AnswerSettings, AudioChunk
from model.engine.history import LiveTurn
from model.engine.session import OmniSession

log = logging.getLogger(__name__)

WARM_UP_SECONDS = 2.5  # a settled 2 s window while "speaking", then the rest at the turn's end, as users do
FRAME_SIZE = (336, 448)  # the camera's frames after capture.camera_frame scales them down
SPEECH_CODES = 16  # past the vocoder's first chunk


@dataclass
class WarmUp:
    seconds: float
    heard: LiveTurn  # the live turn as the encoders and the thinker took it in
    tokens: int
    codes: int
    speech_samples: int


def warm_up(loaded) -> WarmUp:
    """Runs the throwaway conversation; what it made, for the log and the tests."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    session = OmniSession(loaded)
    audio = (0.01 * rng.standard_normal(int(WARM_UP_SECONDS * C.INPUT_SAMPLE_RATE))).astype(np.float32)
    frames = [(rng.integers(0, 256, (*FRAME_SIZE, 3), dtype=np.uint8), seconds) for seconds in (0.0, 0.5)]
    settled = 2 * C.INPUT_SAMPLE_RATE
    session.feed(audio[:settled], frames)
    session.feed(audio[settled:])
    session.end_user_turn()
    settings = AnswerSettings(voice=loaded.voice_names[0], max_new_tokens=4, min_new_tokens=4,
                              talker_min_new_tokens=SPEECH_CODES, talker_max_new_tokens=SPEECH_CODES, seed=0)
    samples, done = 0, None
    for event in session.respond(settings):
        if isinstance(event, AudioChunk):
            samples += len(event.samples)
        elif isinstance(event, AnswerDone):
            done = event
    result = WarmUp(time.perf_counter() - started, session.history[0], len(done.tokens), len(done.codes), samples)
    log.info("warmed up in %.1f s (%d tokens, %d speech codes, %.2f s of speech)", result.seconds, result.tokens,
             result.codes, samples / C.OUTPUT_SAMPLE_RATE)
    return result
