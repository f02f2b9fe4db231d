"""The baseline app, served by a real Gradio server on loopback and called through gradio_client."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from model import constants as C


@pytest.fixture
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def text_of(message: dict) -> str:
    """A chat message's text, whether Gradio gives it as a string or as a list of parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content if isinstance(part, dict))


def ask(client, text="", files=(), voice="Chelsie", text_only=False, max_new_tokens=16):
    from gradio_client import handle_file

    message = {"text": text, "files": [handle_file(str(f)) for f in files]}
    return client.predict(
        message,
        [],
        voice,
        text_only,
        C.AUDIO_SYSTEM_PROMPT,
        max_new_tokens,
        0.0,
        api_name="/respond",
    )


def test_text_question_gets_text_and_24khz_speech(client):
    box, chat, audio = ask(client, "Hello, who are you?")
    assert chat[-1]["role"] == "assistant" and text_of(chat[-1]) not in ("", "…")
    samples, rate = sf.read(audio)
    assert rate == C.OUTPUT_SAMPLE_RATE and len(samples) > 0 and np.abs(samples).max() > 0


def test_spoken_question_file(client, assets):
    _, chat, audio = ask(client, files=[assets / "question.wav"])
    assert any(m["role"] == "user" for m in chat) and chat[-1]["role"] == "assistant"
    assert audio is not None


def test_text_only_has_no_speech(client):
    _, chat, audio = ask(client, "Hi", text_only=True)
    assert chat[-1]["role"] == "assistant" and audio is None


def test_corrupt_upload_says_so_and_the_session_goes_on(client, assets):
    _, chat, audio = ask(client, "what is this?", files=[assets / "corrupt.mp4"])
    assert audio is None
    assert chat[-1]["metadata"]["title"].endswith("Could not answer")
    assert "corrupt.mp4" in text_of(chat[-1]) and "not" in text_of(chat[-1])
    _, chat, audio = ask(client, "Then just say hello.")
    assert chat[-1]["role"] == "assistant" and audio is not None


def test_unknown_voice_is_refused_clearly(loaded):
    from model.conversation import Conversation, Text
    from omni_demo.chat import Responder, TurnSettings

    with pytest.raises(ValueError, match="Unknown voice 'Nobody'"):
        Responder(loaded).answer(Conversation(), [Text("Hi")], TurnSettings(voice="Nobody"))


def test_empty_message_is_refused_clearly(loaded):
    from model.conversation import Conversation, Text
    from omni_demo.chat import Responder, TurnSettings

    with pytest.raises(ValueError, match="Say, type or upload"):
        Responder(loaded).answer(Conversation(), [Text("  ")], TurnSettings())


def test_page_shows_the_tiny_checkpoint_notice(server):
    import json
    import urllib.request

    # The page is rendered in the browser from the app's config; the notice must be in it.
    with urllib.request.urlopen(server.rstrip("/") + "/config") as response:
        config = json.loads(response.read())
    texts = [str(c.get("props", {}).get("value", "")) for c in config["components"]]
    assert any("tiny random-weight" in t and "noise" in t for t in texts)
    voices = next(c for c in config["components"] if c.get("props", {}).get("label") == "Voice")
    assert [choice[0] for choice in voices["props"]["choices"]] == ["Chelsie", "Ethan"]


def test_oversized_upload_is_refused_before_decoding(tmp_path):
    from model.limits import MAX_UPLOAD_BYTES
    from model.media import MediaError
    from omni_demo.chat import parts_from_files

    with open(tmp_path / "big.mp4", "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: takes no disk
    with pytest.raises(MediaError, match=r"File is too large: 200.0 MB, the limit is 200 MB \(big.mp4\)"):
        parts_from_files([str(tmp_path / "big.mp4")])
