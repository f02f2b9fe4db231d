"""The Gradio Blocks page: a chat with text, uploads, a voice choice, and text plus speech answers."""

from __future__ import annotations

import logging
import gradio as gr
import numpy as np

from model import constants as C
from model.conversation import Conversation, Text
from model.media import MediaError
from omni_demo.chat import Reply, Responder, TurnSettings, parts_from_files
from omni_demo.gpu import gpu

log = logging.getLogger(__name__)

UPLOAD_TYPES = ["audio", "image", "video"]

# The one model of this process. A module global because a ZeroGPU call runs in a forked worker that must
# reach the model without pickling it.
_responder: Responder | None = None


def _gpu_seconds(conversation: Conversation, parts, settings: TurnSettings) -> int:
    """ZeroGPU time to reserve for one turn: grows with the answer's length and the media to encode."""
    media_seconds = sum(getattr(p, "seconds", 0.0) for p in parts)
    return int(min(240, 30 + settings.max_new_tokens * 0.2 + media_seconds))


@gpu(duration=_gpu_seconds)
def run_turn(conversation: Conversation, parts, settings: TurnSettings) -> Reply:
    return _responder.answer(conversation, parts, settings)


def _user_messages(text: str, files: list[str]) -> list[dict]:
    messages = [{"role": "user", "content": {"path": path}} for path in files]
    if text:
        messages.append({"role": "user", "content": text})
    return messages


def _as_int16(waveform: np.ndarray) -> np.ndarray:
    # Gradio peak-normalises float audio; int16 plays the model's own levels.
    return (np.clip(waveform, -1.0, 1.0) * 32767).astype(np.int16)


def respond(message, history, conversation, voice, text_only, system_prompt, max_new_tokens, temperature):
    message = message or {}
    text = (message.get("text") or "").strip()
    files = [f if isinstance(f, str) else f.get("path") for f in message.get("files") or []]
    history = list(history or [])
    settings = TurnSettings(voice, bool(text_only), system_prompt or C.AUDIO_SYSTEM_PROMPT, int(max_new_tokens), float(temperature))
    try:
        parts = parts_from_files(files)
    except MediaError as error:
        gr.Warning(str(error))
        yield message, history + [_error_message(str(error))], conversation, None
        return
    if text:
        parts.append(Text(text))  # after the media, as in the model's own examples
    shown = history + _user_messages(text, files)
    yield gr.MultimodalTextbox(value=None, interactive=False), shown + [{"role": "assistant", "content": "…"}], conversation, None
    try:
        reply = run_turn(conversation, parts, settings)
    except ValueError as error:  # a problem with the input: say it, keep everything
        gr.Warning(str(error))
        yield gr.MultimodalTextbox(value=message, interactive=True), history + [_error_message(str(error))], conversation, None
        return
    except Exception as error:  # noqa: BLE001 - the session must survive whatever the model raised
        log.exception("turn failed")
        note = f"The model failed on this turn ({type(error).__name__}). Your conversation is kept; try again."
        gr.Warning(note)
        yield gr.MultimodalTextbox(value=message, interactive=True), history + [_error_message(note)], conversation, None
        return
    answer = {"role": "assistant", "content": reply.text or "(no text)"}
    audio = None if reply.waveform is None else (C.OUTPUT_SAMPLE_RATE, _as_int16(reply.waveform))
    yield gr.MultimodalTextbox(value=None, interactive=True), shown + [answer], reply.conversation, audio


def _error_message(text: str) -> dict:
    return {"role": "assistant", "content": text, "metadata": {"title": "⚠️ Could not answer"}}


def _prompt_warning(system_prompt: str):
    changed = (system_prompt or "").strip() != C.AUDIO_SYSTEM_PROMPT
    return gr.Markdown(visible=changed)


def build_demo(loaded, responder: Responder | None = None) -> gr.Blocks:
    global _responder
    _responder = responder or Responder(loaded)

    with gr.Blocks(title="Qwen2.5-Omni demo") as demo:
        gr.Markdown("# Qwen2.5-Omni\nTalk to the model with text, audio, images and video; it answers in text and speech.")
        gr.Markdown(f"**Model:** {loaded.describe()}", elem_id="model-status")
        for note in loaded.notes:
            gr.Markdown(f"> ⚠️ **{note}**", elem_id="model-notice")
        conversation = gr.State(lambda: Conversation())  # a fresh one per browser tab
        chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chat")
        speech = gr.Audio(label="Spoken answer (24 kHz)", type="numpy", autoplay=True, interactive=False, elem_id="speech")
        box = gr.MultimodalTextbox(
            file_types=UPLOAD_TYPES,
            file_count="multiple",
            placeholder="Type a message, or attach an audio file, an image or a video…",
            show_label=False,
            elem_id="message",
        )
        with gr.Accordion("Settings", open=False):
            voice = gr.Dropdown(choices=loaded.voice_names, value=loaded.voice_names[0], label="Voice")
            text_only = gr.Checkbox(label="Text-only answers (no speech)", value=False)
            system_prompt = gr.Textbox(value=C.AUDIO_SYSTEM_PROMPT, lines=3, label="System prompt")
            prompt_warning = gr.Markdown(
                "⚠️ The model speaks only with the default system prompt; with another one, answers may be text only "
                "or the speech may be wrong. Put a persona in your first message instead.",
                visible=False,
            )
            max_new_tokens = gr.Slider(16, 1024, value=256, step=16, label="Maximum answer length (tokens)")
            temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
        clear = gr.Button("Clear conversation", elem_id="clear")

        system_prompt.change(_prompt_warning, system_prompt, prompt_warning)
        box.submit(
            respond,
            [box, chatbot, conversation, voice, text_only, system_prompt, max_new_tokens, temperature],
            [box, chatbot, conversation, speech],
            api_name="respond",
            concurrency_id="gpu",
            concurrency_limit=1,
        )
        clear.click(lambda: ([], Conversation(), None), None, [chatbot, conversation, speech], api_name="clear")
    return demo

