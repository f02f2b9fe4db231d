"""The live path's rule, searched by hypothesis: a live turn's prompt is a function of its content alone.

Content is the turn's sound and its camera frames with their timestamps. However it arrives (audio in chunks
of 1 sample to 3 s, a camera of 0.5 to 30 fps with jitter, frames lagging behind the sound, all frames first,
all sound first, camera only, sound only) and however it is rebuilt (`restore`), the thinker must end up
with the same ids, the same TMRoPE ids, the same states and the same greedy answer as the canonical turn:
all of the content given at once. The canonical turn itself equals transformers (tests/test_live_input.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import constants as C
from model.engine.live_input import MIN_WINDOW_SAMPLES, SAMPLES_PER_WINDOW, SLOT_SECONDS, STALL_SECONDS
from model.families.qwen2_5_omni.processing import audio_token_count
from model.inputs.conversation import Text
from model.inputs.media import load_audio
from model.session import AnswerSettings, LiveTurn, OmniSession

RATE = C.INPUT_SAMPLE_RATE
FRAME_SIZE = (56, 84)  # small pictures keep the vision encoder quick; 6 tokens a frame pair
EXAMPLES = settings(
    max_examples=14,
    deadline=None,
    derandomize=True,  # the same examples in every CI run; raise max_examples locally to search further
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def speech(assets) -> np.ndarray:
    """7 s of real speech (the spoken question, three times)."""
    return np.tile(load_audio(assets / "question.wav"), 3)[: 7 * RATE]


def picture(index: int) -> np.ndarray:
    """A frame unlike every other: a slot that takes the wrong frame changes the embeddings."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (*FRAME_SIZE, 3), dtype=np.uint8)


@dataclass
class Content:
    audio: np.ndarray
    frames: list[tuple[int, float]]  # (picture index, seconds)

    def key(self):
        return (len(self.audio), tuple(self.frames))


@st.composite
def contents(draw, speech: np.ndarray, camera: bool = True, sound: bool = True) -> Content:
    seconds = draw(st.floats(0.4, 6.5)) if sound else 0.0
    audio = speech[: int(seconds * RATE)]
    frames = []
    if camera:
        fps = draw(st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.5, 15.0, 30.0]))
        start = draw(st.sampled_from([0.0, 0.0, 0.1, 0.7]))  # a camera may deliver its first frame late
        jitter = draw(st.floats(0.0, 0.45 / fps))
        end = seconds if sound else draw(st.floats(0.5, 5.0))
        count = max(1, math.floor((end - start) * fps))
        times = [start + i / fps + (jitter if i % 2 else 0.0) for i in range(count)]
        frames = [(i, round(t, 4)) for i, t in enumerate(times)]
    return Content(audio, frames)


@st.composite
def arrivals(draw, content: Content) -> list[tuple[str, object]]:
    """The order and chunking in which the content reaches the session: ("audio", samples) | ("frame", (i, t))."""
    n = len(content.audio)
    # Chunks of 1 sample to 3 s: cut points anywhere, a run of tiny chunks somewhere, and a cut every 3 s.
    points = set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=12)) if n > 1 else [])
    burst_at, burst_size = draw(st.integers(0, max(0, n - 1))), draw(st.integers(1, 400))
    points |= {burst_at + k * burst_size for k in range(1, draw(st.integers(0, 12)) + 1)}
    points |= set(range(3 * RATE, n, 3 * RATE))
    edges = [0, *sorted(p for p in points if 0 < p < n), n]
    cuts = [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
    chunks = [("audio", content.audio[a:b]) for a, b in cuts]
    frames = [("frame", f) for f in content.frames]
    pattern = draw(st.sampled_from(["lagging", "frames first", "audio first", "late frames"]))
    if pattern == "frames first":
        return pattern, frames + chunks
    if pattern == "audio first":
        return pattern, chunks + frames
    # Each frame arrives once the sound has passed its time by a lag. "lagging": a camera's frames come in
    # order, each within the stall bound; "late frames": any lag up to 3 s, in any order (then a window
    # already prefilled may have to be redone).
    limit = STALL_SECONDS if pattern == "lagging" else 3.0
    due = [t + draw(st.floats(0.0, limit)) for _, (_, t) in frames]
    if pattern == "lagging":
        due = [max(due[: i + 1]) for i in range(len(due))]
    order, heard = [], 0
    pending = sorted(zip(due, range(len(frames))))
    for chunk in chunks:
        heard += len(chunk[1])
        while pending and pending[0][0] * RATE <= heard:
            order.append(frames[pending.pop(0)[1]])
        order.append(chunk)
    return pattern, order + [frames[i] for _, i in pending]


def feed(session: OmniSession, order: list[tuple[str, object]]) -> None:
    for kind, item in order:
        if kind == "audio":
            session.feed_audio(item)
        else:
            index, seconds = item
            session.feed_frame(picture(index), seconds)


def settled_by_the_rule(order: list[tuple[str, object]]) -> int:
    """Windows the documented schedule prefills before the turn ends, written out here independently: a
    window once its 2 s of sound are in and a frame at or past its last slot has come, or no frame at all,
    or the sound has run STALL_SECONDS past its end."""
    heard, latest = 0, None
    for kind, item in order:
        if kind == "audio":
            heard += len(item)
        else:
            latest = item[1] if latest is None else max(latest, item[1])
    count = 0
    while heard >= (count + 1) * SAMPLES_PER_WINDOW:
        end = (count + 1) * SAMPLES_PER_WINDOW / RATE
        if latest is not None and latest < end - SLOT_SECONDS - 1e-6 and heard < (end + STALL_SECONDS) * RATE:
            break
        count += 1
    return count


@dataclass
class Cache:
    ids: list[int]
    positions: torch.Tensor
    states: torch.Tensor
    keys: torch.Tensor  # the last layer's keys
    record: LiveTurn


def snapshot(session: OmniSession) -> Cache:
    thinker = session.thinker
    keys = thinker.cache.layers[-1].keys
    return Cache(
        list(thinker.ids),
        torch.cat(thinker.state_positions, dim=-1).clone(),
        torch.cat(thinker.talker_states, dim=1).clone(),
        keys.clone(),
        session.history[-1],
    )


def assert_same(ours: Cache, canonical: Cache) -> None:
    assert ours.ids == canonical.ids
    assert torch.equal(ours.positions, canonical.positions)
    torch.testing.assert_close(ours.states, canonical.states, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.keys, canonical.keys, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ours.record.audio, canonical.record.audio)
    assert len(ours.record.frames) == len(canonical.record.frames)
    for (a, ta), (b, tb) in zip(ours.record.frames, canonical.record.frames):
        assert ta == tb and np.array_equal(a, b)


def expected_slots(content: Content) -> list[int]:
    """The 2 fps grid by the rule, written out here independently: slot j takes the latest frame taken at or
    before j/2 s, slots before the first frame take the first; as many slots as the sound lasts."""
    if not content.frames:
        return []
    kept = len(content.audio)
    if 0 < kept % SAMPLES_PER_WINDOW < MIN_WINDOW_SAMPLES:
        kept -= kept % SAMPLES_PER_WINDOW
    times = [t for _, t in content.frames]
    count = math.ceil(kept / RATE / SLOT_SECONDS - 1e-6) if kept else int(max(times) / SLOT_SECONDS + 1e-6) + 1
    slots = []
    for j in range(count):
        before = [i for i, t in content.frames if t <= j * SLOT_SECONDS + 1e-6]
        slots.append(before[-1] if before else content.frames[0][0])
    return slots


def expected_audio_tokens(content: Content) -> int:
    windows = [content.audio[i : i + SAMPLES_PER_WINDOW] for i in range(0, len(content.audio), SAMPLES_PER_WINDOW)]
    return sum(audio_token_count(math.ceil(len(w) / 160)) for w in windows)


def answer(session: OmniSession) -> list[int]:
    settings = AnswerSettings(max_new_tokens=5, text_only=True)
    return list(session.respond(settings))[-1].tokens


class Canonical:
    """The canonical turn of each content, built once: everything given in one call, then the turn's end."""

    def __init__(self, loaded):
        self.loaded = loaded
        self._built: dict = {}

    def __call__(self, content: Content, prefix: bool = False) -> tuple[Cache, list[int]]:
        key = (content.key(), prefix)
        if key not in self._built:
            session = new_session(self.loaded, prefix)
            session.feed(content.audio, [(picture(i), t) for i, t in content.frames])
            session.end_user_turn()
            self._built[key] = snapshot(session), answer(session)
        return self._built[key]


def new_session(loaded, prefix: bool) -> OmniSession:
    """A new conversation, or one already past a typed exchange (the live turn is then a later turn)."""
    session = OmniSession(loaded)
    if prefix:
        session.add_user_turn(Text("Hello."))
        answer(session)
    return session


@pytest.fixture(scope="module")
def canonical(loaded) -> Canonical:
    return Canonical(loaded)


def check(loaded, canonical, content: Content, arrival, prefix: bool = False) -> None:
    pattern, order = arrival
    session = new_session(loaded, prefix)
    feed(session, order)
    if pattern in ("lagging", "frames first"):  # the camera kept up: nothing was redone
        assert session.live_windows == settled_by_the_rule(order) and session.windows_redone == 0
    session.end_user_turn()
    ours = snapshot(session)
    expected, expected_answer = canonical(content, prefix)
    assert ours.ids.count(C.AUDIO_TOKEN_ID) == expected_audio_tokens(content)  # every audio token of the turn
    slots = expected_slots(content)
    assert [np.array_equal(f, picture(i)) for (f, _), i in zip(ours.record.frames, slots)] == [True] * len(slots)
    assert len(ours.record.frames) == len(slots)
    assert_same(ours, expected)
    assert answer(session) == expected_answer


@EXAMPLES
@given(data=st.data())
def test_camera_and_sound_in_any_order(loaded, canonical, speech, data):
    content = data.draw(contents(speech))
    check(loaded, canonical, content, data.draw(arrivals(content)))


@EXAMPLES
@given(data=st.data())
def test_sound_only_in_any_chunking(loaded, canonical, speech, data):
    content = data.draw(contents(speech, camera=False))
    check(loaded, canonical, content, data.draw(arrivals(content)))


@settings(EXAMPLES, max_examples=6)
@given(data=st.data())
def test_camera_only(loaded, canonical, speech, data):
    content = data.draw(contents(speech, sound=False))
    check(loaded, canonical, content, data.draw(arrivals(content)))


@settings(EXAMPLES, max_examples=6)
@given(data=st.data())
def test_a_later_live_turn_in_any_order(loaded, canonical, speech, data):
    content = data.draw(contents(speech))
    check(loaded, canonical, content, data.draw(arrivals(content)), prefix=True)


@settings(EXAMPLES, max_examples=6)
@given(data=st.data())
def test_restore_rebuilds_the_live_cache(loaded, speech, data):
    """A history carried to a new session (a ZeroGPU call, a rebuilt conversation) gives the cache the live
    turn built, token for token, and the same answer."""
    import pickle

    content = data.draw(contents(speech, camera=data.draw(st.booleans())))
    live = new_session(loaded, prefix=True)
    feed(live, data.draw(arrivals(content))[1])
    live.end_user_turn()
    rebuilt = OmniSession(loaded)
    rebuilt.restore(pickle.loads(pickle.dumps(live.history)))
    assert_same(snapshot(rebuilt), snapshot(live))
    assert answer(rebuilt) == answer(live)


@settings(EXAMPLES, max_examples=8)
@given(data=st.data())
def test_a_turn_continued_after_a_pause_is_the_turn_spoken_without_it(loaded, canonical, speech, data):
    """Speech resumes after the turn had ended (and its answer had maybe begun): the answer and the turn's
    closing are taken back and the same turn goes on; the caches end as if the turn had never been split."""
    content = data.draw(contents(speech, camera=data.draw(st.booleans())))
    split = data.draw(st.integers(int(0.3 * RATE), len(content.audio) - 1))  # a turn holds 0.3 s of voice
    answered = data.draw(st.sampled_from(["no answer", "an answer", "a spoken answer cut short"]))
    prefix = data.draw(st.booleans())
    session = new_session(loaded, prefix)
    before = [(i, t) for i, t in content.frames if t * RATE < split]
    session.feed(content.audio[:split], [(picture(i), t) for i, t in before])
    session.end_user_turn()
    if answered == "an answer":
        answer(session)
    elif answered == "a spoken answer cut short":
        events = session.respond(AnswerSettings(max_new_tokens=30))
        for event in events:
            if type(event).__name__ == "AudioChunk" or len(session.talker.codes) >= 4:
                break
        events.close()
    session.continue_user_turn()
    for i, t in content.frames[len(before) :]:
        session.feed_frame(picture(i), t)
    session.feed_audio(content.audio[split:])
    session.end_user_turn()
    expected, expected_answer = canonical(content, prefix)
    assert_same(snapshot(session), expected)
    if session.talker is not None:
        assert session.talker.length == session.talker.prompt_length
        # A prefix of the thinker's states (what was fed before the turn ended, nothing taken back since); the
        # rest, the closing's at least, is fed once the answer's first token is chosen.
        fed = session._talker_fed
        assert fed < len(session.thinker.talker_states)
        assert session.talker.prompt_length == sum(state.shape[1] for state in session.thinker.talker_states[:fed])
    assert answer(session) == expected_answer
