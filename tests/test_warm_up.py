"""The throwaway conversation run before the first visitor (model/warm_up.py): every stage runs, and nothing
of it reaches a real conversation."""

from __future__ import annotations

import pytest

from model import constants as C
from model.inputs.conversation import Text
from model.session import AnswerDone, AnswerSettings, OmniSession
from model.warm_up import SPEECH_CODES, WARM_UP_SECONDS, warm_up


def greedy_answer(loaded) -> AnswerDone:
    session = OmniSession(loaded)
    session.add_user_turn(Text("What do you see?"))
    settings = AnswerSettings(voice=loaded.voice_names[-1], max_new_tokens=6, talker_max_new_tokens=20, seed=1)
    (done,) = [e for e in session.respond(settings) if isinstance(e, AnswerDone)]
    return done


@pytest.mark.parametrize("family", ["loaded", "qwen3_loaded"])
def test_the_warm_up_runs_every_stage_and_changes_no_answer(family, request):
    loaded = request.getfixturevalue(family)
    before = greedy_answer(loaded)
    made = warm_up(loaded)
    # The encoders took in a live turn of sound and pictures; the thinker, the talker and the vocoder made
    # its spoken answer.
    assert len(made.heard.audio) == WARM_UP_SECONDS * C.INPUT_SAMPLE_RATE and len(made.heard.frames) >= 2
    assert made.heard.span > 0
    assert made.tokens == 4 and made.codes == SPEECH_CODES and made.speech_samples > 0
    after = greedy_answer(loaded)
    assert (after.tokens, after.codes) == (before.tokens, before.codes)
