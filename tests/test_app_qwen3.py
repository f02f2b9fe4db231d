"""The app serving the tiny Qwen3-Omni: the same page names the model and offers its voices and defaults,
and a spoken question with the camera on, in a real browser, is answered in text and speech."""

from __future__ import annotations

from speech import silence, speech_48k
from test_app import component, config
from test_browser import (
    answers_ended,
    assert_the_heard_turn_reached_the_model,
    microphone_file,
    open_page,
    start_talking,
    wait_for,
    wait_for_clips,
)

from model.families.qwen3_omni import loading as Q3


def test_the_page_names_qwen3_omni_and_offers_its_voices_and_defaults(qwen3_app):
    page = config(qwen3_app[1])
    assert "tiny random-weight Qwen3-Omni checkpoint on cpu" in component(page, "model-status")["props"]["value"]
    assert page["title"] == "Qwen3-Omni live"
    voices = next(c for c in page["components"] if c.get("props", {}).get("label") == "Voice")["props"]
    assert [choice[0] for choice in voices["choices"]] == ["Aiden", "Chelsie", "Ethan"] and voices["value"] == "Ethan"
    prompt = next(c for c in page["components"] if c.get("props", {}).get("label") == "System prompt")["props"]
    assert prompt["value"] == Q3.SYSTEM_PROMPT


def test_a_spoken_question_with_the_camera_is_answered_in_text_and_speech(playwright, qwen3_app, camera_video, tmp_path):
    app, server = qwen3_app
    microphone = microphone_file(tmp_path, silence(1.0), speech_48k(), silence(8.0))
    browser, page = open_page(playwright, server, microphone, camera_video, max_tokens=24)
    try:
        start_talking(page, camera=True)
        state = wait_for(page, answers_ended(1), "the spoken question's answer")
        answer = state["answers"][0]
        assert answer["chunks"] >= 2 and answer["samples"] > 0 and answer["stoppedAt"] is None
        assert answer["firstStart"] >= answer["firstArrival"]
        wait_for_clips(page, 2)  # the user's clip and the answer's
        assert_the_heard_turn_reached_the_model(app)
    finally:
        browser.close()
