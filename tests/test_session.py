"""The streaming engine against transformers' own generate on the same tiny weights (greedy).

Where two equivalent computations sum floats in different orders, a greedy choice whose top-2 margin is
below MARGIN_TOLERANCE may legitimately flip; choices are compared up to the first such near-tie and must
be identical wherever the margin is above it. (On this machine every case matches to the end.)
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import HARNESS_CASES

from model import constants as C
from model.engine.sampling import Sampling
from model.families.qwen2_5_omni.reference import TalkerSampling, reference_generate
from model.families.qwen2_5_omni.token2wav import PreparedVoice
from model.inputs.conversation import Text
from model.session import AnswerDone, AnswerSettings, AudioChunk, OmniSession, TextDelta

MARGIN_TOLERANCE = 1e-3  # float32 logits of O(10): error between summation orders is well below this


def greedy_settings(harness, **overrides) -> AnswerSettings:
    settings = AnswerSettings(
        max_new_tokens=harness.max_new_tokens,
        talker=Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
        noise_seed=harness.noise_seed,
        margins=True,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def run(session: OmniSession, settings: AnswerSettings):
    events = list(session.respond(settings))
    done = events[-1]
    assert isinstance(done, AnswerDone)
    return events, done


def assert_same_choices(ours: list[int], theirs: list[int], margins: list[float]) -> None:
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            assert margins[i] < MARGIN_TOLERANCE, f"step {i}: {a} != {b} with margin {margins[i]:.2e}"
            return  # a near-tie flipped: what follows is a different, equally valid, continuation
    assert len(ours) == len(theirs)


def one_turn(loaded, harness, case: str):
    session = OmniSession(loaded)
    conversation = harness.conversation(case)
    session.add_user_turn(*conversation.turns[0].parts)
    # A first chunk of 48 mel frames holds the harness's short answers (up to 24 codes) whole.
    return session, *run(session, greedy_settings(harness, first_chunk_frames=48))


@pytest.mark.parametrize("case", [c for c in HARNESS_CASES if c != "second_turn"])
def test_tokens_codes_and_audio_equal_transformers(loaded, harness, case):
    session, events, done = one_turn(loaded, harness, case)
    reference = harness.result(case)
    assert session.thinker.ids[: len(reference.prompt_ids)] == reference.prompt_ids
    assert_same_choices(done.tokens, reference.thinker_tokens, done.token_margins)
    if done.tokens == reference.thinker_tokens:
        assert_same_choices(done.codes, reference.talker_codes, done.code_margins)
    if done.codes == reference.talker_codes:
        # Short answers fit one token2wav chunk: decoded in one shot, so the very same waveform.
        audio = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
        np.testing.assert_array_equal(audio, reference.waveform)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == done.text == loaded.processor.tokenizer.decode(done.tokens, skip_special_tokens=True)


def test_second_turn_reuses_the_cache(loaded, harness):
    session = OmniSession(loaded)
    conversation = harness.conversation("text")
    session.add_user_turn(*conversation.turns[0].parts)
    _, first = run(session, greedy_settings(harness))
    cache_before = session.thinker.cache.get_seq_length()
    kept = list(session.thinker.ids)
    session.add_user_turn(Text("And how many people live there?"))
    # The first turn's cache is extended, not rebuilt.
    assert session.thinker.ids[: len(kept)] == kept and session.thinker.cache.get_seq_length() > cache_before
    prompt = list(session.thinker.ids)
    _, second = run(session, greedy_settings(harness))
    # transformers sees the whole conversation as one prompt: exactly the ids our cache holds.
    follow_up = harness.conversation("second_turn")
    reference = reference_generate(
        loaded,
        follow_up,
        max_new_tokens=harness.max_new_tokens,
        talker=TalkerSampling(greedy=True),
        noise_seed=harness.noise_seed,
        prompt_ids=prompt,
    )
    assert_same_choices(second.tokens, reference.thinker_tokens, second.token_margins)
    if second.tokens == reference.thinker_tokens:
        assert_same_choices(second.codes, reference.talker_codes, second.code_margins)
    assert first.tokens != second.tokens


def test_second_turn_prompt_is_the_chat_template(loaded, harness):
    """The cached ids of two turns are the template's rendering of the same conversation, token for token,
    whenever the first answer's text re-tokenises to its own ids."""
    session = OmniSession(loaded)
    session.add_user_turn(Text(harness.conversation("text").turns[0].parts[0].text))
    _, first = run(session, greedy_settings(harness, text_only=True))
    session.add_user_turn(Text("And how many people live there?"))
    tokenizer = loaded.processor.tokenizer
    answer_ids = first.tokens[:-1] if first.tokens[-1] == C.IM_END_ID else first.tokens
    if tokenizer(tokenizer.decode(answer_ids)).input_ids != answer_ids:
        pytest.skip("this answer's text does not re-tokenise to its own ids")
    conversation = harness.conversation("text")
    conversation.add_assistant(first.text)
    conversation.add_user(Text("And how many people live there?"))
    from model.families.qwen2_5_omni.reference import prepare_inputs

    assert session.thinker.ids == prepare_inputs(loaded.processor, conversation)["input_ids"][0].tolist()


def test_text_only_answer_has_no_audio_and_same_text(loaded, harness):
    session = OmniSession(loaded)
    session.add_user_turn(*harness.conversation("text").turns[0].parts)
    events, done = run(session, greedy_settings(harness, text_only=True))
    assert not any(isinstance(e, AudioChunk) for e in events)
    assert done.codes == [] and done.tokens == harness.result("text").thinker_tokens


def test_audio_streams_before_the_answer_ends(loaded, harness):
    """A longer answer comes out in several chunks, the first after 36 codes, and has the reference length."""
    session = OmniSession(loaded)
    session.add_user_turn(*harness.conversation("audio").turns[0].parts)
    events, done = run(session, greedy_settings(harness, max_new_tokens=80))
    chunks = [i for i, e in enumerate(events) if isinstance(e, AudioChunk)]
    deltas = [i for i, e in enumerate(events) if isinstance(e, TextDelta)]
    assert len(chunks) >= 2
    assert chunks[0] < deltas[-1], "the first audio must leave before the last text"
    total = sum(len(events[i].samples) for i in chunks)
    assert total == len(done.codes) * C.OUTPUT_SAMPLE_RATE // C.CODES_PER_SECOND
    assert done.timings.first_audio < done.timings.total


def test_interrupt_stops_within_a_step_and_keeps_what_was_said(loaded, harness):
    session = OmniSession(loaded)
    session.add_user_turn(*harness.conversation("text").turns[0].parts)
    seen = []
    for event in session.respond(greedy_settings(harness, max_new_tokens=200)):
        seen.append(event)
        if isinstance(event, TextDelta) and len([e for e in seen if isinstance(e, TextDelta)]) == 3:
            threading.Thread(target=session.interrupt).start()
            threading.Event().wait(0.2)
    done = seen[-1]
    assert done.interrupted and 3 <= len(done.tokens) < 10  # stopped at once, not after 200 tokens
    # The session goes on: the next turn starts right after what was said.
    session.add_user_turn(Text("Go on."))
    assert session.thinker.ids.count(C.IM_START_ID) == 5  # system, user, assistant, user, assistant
    _, after = run(session, greedy_settings(harness, max_new_tokens=4, text_only=True))
    assert not after.interrupted and after.tokens


def test_unknown_voice_is_refused(loaded, harness):
    session = OmniSession(loaded)
    session.add_user_turn(Text("Hi"))
    with pytest.raises(ValueError, match="Unknown voice"):
        run(session, greedy_settings(harness, voice="Nobody"))


def test_context_limit_drops_the_oldest_turns(loaded, harness):
    from model.session import ContextTrimmed

    limit = 260  # the tiny model holds 32768 like the real ones; a small limit makes the test quick
    session = OmniSession(loaded, max_positions=limit)
    trims, questions = [], [f"Question number {i}?" for i in range(6)]
    for question in questions:
        session.add_user_turn(Text(question))
        events, done = run(session, greedy_settings(harness, text_only=True))
        trims += [e for e in events if isinstance(e, ContextTrimmed)]
        assert session.thinker.next_position <= limit
        assert session.thinker.cache.get_seq_length() == session.thinker.length  # positions and cache agree
    assert trims and all(t.dropped_turns >= 1 and "dropped" in t.message for t in trims)
    text = loaded.processor.tokenizer.decode(session.thinker.ids)
    assert text.startswith(f"<|im_start|>system\n{C.AUDIO_SYSTEM_PROMPT}<|im_end|>")
    assert questions[-1] in text and questions[0] not in text
    # What is kept is a well-formed conversation: one system turn, then user/assistant pairs.
    roles = [part.split("\n", 1)[0] for part in text.split("<|im_start|>")[1:]]
    assert roles[0] == "system" and roles[1::2] == ["user"] * len(roles[1::2])
    assert roles[2::2] == ["assistant"] * len(roles[2::2])


def test_an_input_too_long_for_the_context_is_refused(loaded):
    session = OmniSession(loaded, max_positions=120)
    with pytest.raises(ValueError, match="needs .* positions"):
        session.add_user_turn(Text("word " * 200))
    session.add_user_turn(Text("Short."))  # the session goes on
    assert session.turns == 1


def test_token2wav_settings_reach_the_decoder(loaded, harness):
    session = OmniSession(loaded)
    session.add_user_turn(*harness.conversation("text").turns[0].parts)
    events, done = run(session, greedy_settings(harness, solver="euler", num_steps=4))
    euler = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
    assert done.codes == harness.result("text").talker_codes  # same codes, other solver
    assert len(euler) == len(harness.result("text").waveform)
    assert not np.array_equal(euler, harness.result("text").waveform)


def test_every_session_shares_the_models_prepared_voices(loaded, harness, monkeypatch):
    """A voice's DiT conditioning and time modulation are made at its first answer on the model, then kept."""
    made, real = [], PreparedVoice.make
    monkeypatch.setattr(PreparedVoice, "make", classmethod(lambda cls, *args: made.append(args) or real(*args)))
    settings = greedy_settings(harness, solver="euler", num_steps=3)  # settings no other test prepares
    for _ in range(2):
        session = OmniSession(loaded)
        session.add_user_turn(*harness.conversation("text").turns[0].parts)
        events, done = run(session, settings)
        assert done.codes == harness.result("text").talker_codes and any(isinstance(e, AudioChunk) for e in events)
    assert len(made) == 1


def test_abandoned_answer_leaves_the_session_usable(loaded, harness):
    """A consumer that stops reading (a closed browser tab) must not leave the caches mid-answer."""
    session = OmniSession(loaded)
    session.add_user_turn(*harness.conversation("text").turns[0].parts)
    answer = session.respond(greedy_settings(harness, max_new_tokens=50))
    for event in answer:
        if isinstance(event, AudioChunk) or len(session.talker.codes) >= 3:
            break
    answer.close()
    assert session.talker.length == session.talker.prompt_length  # the answer's talker positions are gone
    session.add_user_turn(Text("Still there?"))
    _, done = run(session, greedy_settings(harness, max_new_tokens=4))
    assert done.tokens and done.codes


def test_interrupted_answer_is_in_the_cache_once(loaded, harness):
    """However an answer stops, each of its tokens is in the cache exactly once before the next turn."""
    session = OmniSession(loaded)
    session.add_user_turn(*harness.conversation("text").turns[0].parts)
    prompt = list(session.thinker.ids)
    for event in session.respond(greedy_settings(harness, max_new_tokens=200, text_only=True)):
        if isinstance(event, TextDelta):
            session.interrupt()  # lands after the token was fed (the next check is at the loop's top)
    done = event
    assert done.interrupted
    session.add_user_turn(Text("Go on."))
    after = session.thinker.ids[len(prompt) :]
    assert after[: len(done.tokens)] == done.tokens
    assert after[len(done.tokens) : len(done.tokens) + 2] == [C.IM_END_ID, loaded.processor.tokenizer("\n").input_ids[0]]
    assert session.thinker.cache.get_seq_length() == session.thinker.length


@pytest.mark.parametrize("keep", [0, 3])
def test_keep_answer_forgets_what_was_not_heard(loaded, harness, keep):
    session = OmniSession(loaded)
    session.add_user_turn(*harness.conversation("text").turns[0].parts)
    prompt = list(session.thinker.ids)
    _, done = run(session, greedy_settings(harness, max_new_tokens=12))
    assert len(done.tokens) > keep
    session.keep_answer(keep)
    assert session.history[-1].tokens == done.tokens[:keep]
    session.add_user_turn(Text("Go on."))
    tokenizer = loaded.processor.tokenizer
    go_on = tokenizer("<|im_end|>\n<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n").input_ids
    assert session.thinker.ids == prompt + done.tokens[:keep] + go_on
    assert session.thinker.cache.get_seq_length() == session.thinker.length
    prompt_ids = list(session.thinker.ids)
    _, after = run(session, greedy_settings(harness, max_new_tokens=6, text_only=True))
    reference = reference_generate(
        loaded, harness.conversation("text"), max_new_tokens=6, text_only=True, prompt_ids=prompt_ids
    )
    assert_same_choices(after.tokens, reference.thinker_tokens, after.token_margins)


def test_restore_rebuilds_the_same_conversation(loaded, harness, assets):
    """A history carried to a fresh session (a ZeroGPU call's process) gives the same caches and answers."""
    import pickle

    from model.inputs.conversation import Audio
    from model.inputs.media import load_audio

    first = OmniSession(loaded)
    first.add_user_turn(*harness.conversation("text").turns[0].parts)
    run(first, greedy_settings(harness, max_new_tokens=6))
    first.feed_live(Audio(load_audio(assets / "question.wav")))
    run(first, greedy_settings(harness, max_new_tokens=6))
    history = pickle.loads(pickle.dumps(first.history))

    second = OmniSession(loaded)
    second.restore(history)
    assert second.thinker.ids == first.thinker.ids
    for session in (first, second):
        session.add_user_turn(Text("Go on."))
    _, a = run(first, greedy_settings(harness, max_new_tokens=6))
    _, b = run(second, greedy_settings(harness, max_new_tokens=6))
    assert a.tokens == b.tokens and a.codes == b.codes


def test_a_live_turn_that_starts_late_in_the_context_makes_room_first(loaded, harness, assets):
    """A live turn starting past 3/4 of the model's positions trims the oldest turns before it is fed (it
    raised AttributeError: the trim's restore dropped the live turn being opened)."""
    from model.families.qwen2_5_omni.processing import audio_token_count
    from model.inputs.conversation import Audio
    from model.inputs.media import load_audio
    from model.session import AnswerTurn, LiveTurn, UserTurn

    limit = 420
    session = OmniSession(loaded, max_positions=limit)
    for i in range(12):
        session.add_user_turn(Text(f"Question number {i}, with a few more words to take up some room?"))
        run(session, greedy_settings(harness, text_only=True, max_new_tokens=8))
        if session.thinker.next_position + limit // 4 > limit:
            break
    assert session.thinker.next_position + limit // 4 > limit
    audio = load_audio(assets / "question.wav")
    session.feed_live(Audio(audio))
    _, done = run(session, greedy_settings(harness, text_only=True, max_new_tokens=4))
    assert done.tokens and session.thinker.next_position <= limit
    history = session.history
    assert isinstance(history[0], UserTurn) and "Question number 0," not in history[0].parts[0].text
    assert [type(r) for r in history[-2:]] == [LiveTurn, AnswerTurn]
    windows = [audio[i : i + 32000] for i in range(0, len(audio), 32000)]
    expected = sum(audio_token_count(-(-len(w) // 160)) for w in windows)
    assert session.thinker.ids.count(C.AUDIO_TOKEN_ID) == expected  # every audio token of the turn is there
    # The trimmed conversation is what a restore of its history builds.
    rebuilt = OmniSession(loaded, max_positions=limit)
    rebuilt.restore(history)
    assert rebuilt.thinker.ids == session.thinker.ids


def test_a_whole_turn_drops_a_live_turn_left_open(loaded, harness, assets):
    from model.inputs.media import load_audio

    session = OmniSession(loaded)
    session.feed_audio(load_audio(assets / "question.wav")[:40000])  # a window is already in the cache
    assert session.live_windows == 1
    session.add_user_turn(Text("Hello?"))
    fresh = OmniSession(loaded)
    fresh.add_user_turn(Text("Hello?"))
    assert session.thinker.ids == fresh.thinker.ids and session.live_windows == 0
    assert session.thinker.cache.get_seq_length() == len(fresh.thinker.ids)
