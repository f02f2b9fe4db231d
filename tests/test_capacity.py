"""Many tabs on one server: the caches' memory budget holds, a conversation whose caches were given back
answers its next turn as if it had kept them, and a tab past `max_tabs` is told the demo is full."""

from __future__ import annotations

from test_browser import open_page
from test_session import assert_same_choices

from model.engine.events import AnswerDone, AnswerSettings
from model.engine.sampling import Sampling
from model.inputs.conversation import Text
from model.session import OmniSession
from omni_demo.cache_budget import CacheBudget
from omni_demo.live import ChatSettings, LiveSession
from omni_demo.worker import ModelWorker

TABS = 50
TOKENS = 4
QUESTIONS = [("Hello, who are you?", "And what can you do?"), ("Name a colour.", "Another one?"),
             ("What is one plus one?", "And two plus two?"), ("Say something.", "Say more.")]


def kept_caches(loaded, first: str, second: str) -> tuple[AnswerDone, int]:
    """The two turns in one session that keeps its caches: the second answer, and the most memory such a
    conversation holds (rebuilt from its history, its talker has read the conversation too)."""
    session = OmniSession(loaded, system_prompt=ChatSettings.for_model(loaded).system_prompt)
    settings = AnswerSettings(text_only=True, max_new_tokens=TOKENS, thinker=Sampling(greedy=True), margins=True)
    session.add_user_turn(Text(first))
    for _ in session.respond(settings):
        pass
    session.add_user_turn(Text(second))
    done = [e for e in session.respond(settings) if isinstance(e, AnswerDone)][0]
    rebuilt = OmniSession(loaded, system_prompt=ChatSettings.for_model(loaded).system_prompt)
    rebuilt.restore(session.history)
    return done, max(session.cache_bytes(), rebuilt.cache_bytes())


def test_fifty_tabs_on_a_small_budget_answer_as_if_they_had_kept_their_caches(loaded):
    references = [kept_caches(loaded, *pair) for pair in QUESTIONS]
    one = max(held for _, held in references)
    budget = CacheBudget(4 * one)  # four conversations' caches, for fifty tabs
    worker = ModelWorker(max_active=3)  # what answers at once fits, with room for one being rebuilt
    tabs = [LiveSession(f"tab-{i}", loaded, worker, budget=budget) for i in range(TABS)]
    try:
        for tab in tabs:
            tab.update(max_new_tokens=TOKENS, text_only=True)
        for turn in range(2):
            for i, tab in enumerate(tabs):  # everyone asks at once
                assert tab.send(QUESTIONS[i % len(QUESTIONS)][turn], []) is None
            assert worker.idle(300)
            # Within the budget whenever a conversation was about to use its caches, and now.
            assert budget.peak <= budget.budget_bytes and budget.held() <= budget.budget_bytes + one
        assert budget.given_back >= TABS  # nearly every tab gave its caches back at least once
        for i, tab in enumerate(tabs):
            assert not any("Could not answer" in str(m.get("metadata")) for m in tab.chat)
            done, _ = references[i % len(QUESTIONS)]
            assert_same_choices(tab.answer.tokens, done.tokens, done.token_margins)
            assert [type(r).__name__ for r in tab.model.history] == ["UserTurn", "AnswerTurn"] * 2
    finally:
        for tab in tabs:
            tab.close()
        worker.stop()


def test_a_tab_past_max_tabs_is_told_the_demo_is_full(playwright, loaded):
    from conftest import CHROMIUM, free_port

    from omni_demo.ui import build_app

    app = build_app(loaded, max_tabs=1)
    _, url, _ = app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True)
    first_browser, first = open_page(playwright, url, max_tokens=8)  # its settings open its conversation
    second_browser = None
    try:
        assert len(app.sessions) == 1 and not first.locator("#full").is_visible()
        second_browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        second = second_browser.new_page()
        second.goto(url)
        second.wait_for_selector("#full :text('The demo is full: 1 person is talking. Try again in a minute.')",
                                 timeout=60_000)
        second.fill("#message textarea", "Me too?")
        second.keyboard.press("Enter")
        second.wait_for_selector(":text('Try again in a minute')", timeout=30_000)
        assert len(app.sessions) == 1  # the second tab opened no conversation
    finally:
        first_browser.close()
        if second_browser is not None:
            second_browser.close()
        app.demo.close()
        app.sessions.close_all()
        app.worker.stop()


def test_a_long_rebuild_lets_another_answer_through_meanwhile(loaded):
    """Caches given back are rebuilt a turn per round of the model worker: a tab whose long conversation is
    being rebuilt does not hold another tab's answer until it is done."""
    worker = ModelWorker(max_active=2, thread=False)
    long, other = LiveSession("long", loaded, worker), LiveSession("other", loaded, worker)
    try:
        for tab in (long, other):
            tab.update(max_new_tokens=TOKENS, text_only=True)
        for turn in range(10):
            long.send(f"Question number {turn}.", [])
            while worker.run_round():
                pass
        history = long.model.history
        assert len(history) == 20
        long.model.give_back()
        long.send("And now?", [])
        other.send("Hello?", [])
        answered_meanwhile = False
        while worker.run_round():
            if long.model._engine is None and other.answer.finished:
                answered_meanwhile = True
        assert answered_meanwhile
        assert long.model.history[:20] == history and len(long.model.history) == 22  # rebuilt, then answered
    finally:
        long.close()
        other.close()
        worker.stop()
