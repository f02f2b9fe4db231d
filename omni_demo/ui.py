"""The Gradio Blocks page: camera and microphone in, streamed text and speech out, per-turn timings.

Handlers only move values between the page and the tab's `LiveSession`. One event writes the chat, the
player, the status and the timings: `follow`, started by a hidden counter that the microphone handler (a
turn ended), the message box, Stop and Clear bump. Two events streaming into one component would corrupt
each other's diffs, so nothing else writes those.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from model import constants as C
from model.warm_up import warm_up
from omni_demo import gpu
from omni_demo.cache_budget import CacheBudget
from omni_demo.live import ChatSettings
from omni_demo.playback import player_script
from omni_demo.replicas import Replicas
from omni_demo.sessions import MAX_TABS, PAGELESS_IDLE_SECONDS, SessionClosed, SessionRefused, Sessions
from omni_demo.timings import STAGES, chart, figures, summary
from omni_demo.view import View
from omni_demo.worker import ModelWorker

log = logging.getLogger(__name__)
UPLOAD_TYPES = ["audio", "image", "video"]
# Microphone chunk length. Shorter ends a turn sooner after the silence (a chunk is judged when it arrives);
# the handler must stay well under it, since Gradio keeps only the latest chunk of a slow handler.
MIC_CHUNK_SECONDS = 0.2
CAMERA_FRAME_SECONDS = 1 / C.VIDEO_FPS  # the model's 2 fps
PROMPT_WARNING = (
    "⚠️ The model speaks only with the default system prompt; with another one, answers may be text only or "
    "the speech may be wrong. Put a persona in your first message instead."
)
PLAYER_HTML = "<div class='omni-player'>🔈 Speech plays here as it is generated.</div>"
# Ready inputs for a visitor who cannot or will not talk: the project's own media (assets/make_assets.py),
# sent through the message box like any upload.
ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLES = [
    {"text": "", "files": [str(ASSETS / "question.wav")]},
    {"text": "What is in this picture?", "files": [str(ASSETS / "scene.png")]},
    {"text": "", "files": [str(ASSETS / "clip_with_audio.mp4")]},
]
EXAMPLE_LABELS = ["🎙️ A spoken question", "🖼️ A picture and a question", "🎬 A video with its sound"]
# Gradio's queue looks for work every 1 ms while it has none (gradio/queueing.py): about 4 % of a core with
# no tab open. With no tab open it looks every 100 ms (only a new tab's first event can wait for that); with
# one open, at Gradio's own pace, so no event of a conversation waits. The page shows no progress bars.
QUEUE_POLL_SECONDS = {"no tab open": 0.1, "tabs open": 0.001}
PROGRESS_POLL_SECONDS = 0.1


@dataclass
class App:
    demo: gr.Blocks
    sessions: Sessions
    worker: ModelWorker


def seed_value(text) -> int | None:
    """The seed box: empty means random; anything else must be a whole number."""
    text = str(text or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        gr.Warning(f"The seed must be a whole number (or empty, for random), not {text[:20]!r}: answers stay random.")
        return None


def _render(view: View, new_figures: str | None) -> tuple:
    """The page's outputs for a view; the timings' only with `new_figures` (a chart is drawn again each time
    it is sent)."""
    if new_figures is None:
        return view.chat, view.player, view.status, gr.skip(), gr.skip(), gr.skip()
    last = summary(view.timings[-1]) if view.timings else ""
    return view.chat, view.player, view.status, last, new_figures, chart(view.timings)


def build_app(loaded, max_active: int | None = None, zero_gpu: bool | None = None, defaults: ChatSettings | None = None,
              pageless_idle_seconds: float = PAGELESS_IDLE_SECONDS, cache_gib: float | None = None,
              max_tabs: int = MAX_TABS, budget: CacheBudget | None = None, replicas: Replicas | None = None) -> App:
    """The page around `loaded`. On ZeroGPU (found from the environment unless told) each turn is one GPU
    call made by the `follow` event; elsewhere the model worker runs everything.

    The caches' memory is a budget (`cache_gib`, or a share of what is free; or `budget` itself): idle
    conversations give theirs back when it is needed, and `max_active` (default: what the budget holds)
    answers share each batched step. At most `max_tabs` conversations are open at once. One throwaway answer
    runs first, so the first visitor waits no longer than the next (model/warm_up.py).

    `send`, `stop` and `clear` are also an API (gradio_client); a conversation that no page opened expires
    after `pageless_idle_seconds` without an event, and only so many exist at once (omni_demo/sessions.py).

    With `replicas` the model runs on Ray (omni_demo/replicas.py) and `loaded` holds no weights: this
    process's worker only relays each tab's calls, and every replica batches and budgets its own."""
    zero_gpu = gpu.on_zero_gpu() if zero_gpu is None else zero_gpu
    gpu.serve(loaded)
    if budget is None:  # on ZeroGPU no cache outlives its call; on replicas none is held here
        budget = CacheBudget(None) if zero_gpu or replicas else CacheBudget.for_model(loaded, cache_gib)
    max_active = max_tabs if replicas else max_active or budget.answers_at_once(loaded)
    if budget.budget_bytes is not None:
        log.info("cache budget %.1f GiB: %d answers share each step, %d conversations at most",
                 budget.budget_bytes / 2**30, max_active, max_tabs)
    if not zero_gpu and not replicas:  # after the budget, which counts what is free; on ZeroGPU no GPU is held
        warm_up(loaded)  # outside an answer; replicas warm up their own
    worker = ModelWorker(max_active=max_active)
    budget.counts_also(worker.batch_cache_bytes)
    defaults = defaults or ChatSettings.for_model(loaded)
    family = loaded.family

    def pace_queue(open_tabs: int) -> None:
        demo._queue.sleep_when_free = QUEUE_POLL_SECONDS["tabs open" if open_tabs else "no tab open"]

    sessions = Sessions(loaded, worker, zero_gpu, defaults, on_count=pace_queue, idle_seconds=pageless_idle_seconds,
                        max_tabs=max_tabs, budget=budget, replicas=replicas)
    counter = itertools.count(1)  # values for the hidden trigger: each bump must differ from the last

    def session(request: gr.Request):
        try:
            return sessions.get(request.session_hash)
        except SessionClosed:
            raise gr.Error("This conversation was closed: the page lost its connection to the server. "
                           "Reload the page to start a new one.") from None
        except SessionRefused as refused:
            raise gr.Error(str(refused), title="Please wait") from None

    def on_mic(chunk, request: gr.Request):
        if chunk is None:
            return gr.skip(), gr.skip()
        live = session(request)
        was_hearing = live.hearing
        rate, samples = chunk
        ended = live.hear(rate, samples)
        hearing = gr.skip() if live.hearing == was_hearing else ("👂 Hearing you…" if live.hearing else "🎙️ Listening")
        return (next(counter) if ended else gr.skip()), hearing

    def on_frame(frame, request: gr.Request):
        if frame is not None:
            session(request).see(frame)

    def follow(request: gr.Request):
        shown = None
        for view in session(request).follow():
            data = figures(view.timings)
            yield _render(view, data if data != shown else None)
            shown = data

    def on_send(message, request: gr.Request):
        message = message or {}
        files = [f if isinstance(f, str) else f.get("path") for f in message.get("files") or []]
        refused = session(request).send(message.get("text") or "", files)
        if refused:
            gr.Warning(refused)
            return gr.skip(), next(counter)
        return gr.MultimodalTextbox(value=None), next(counter)

    def on_stop(request: gr.Request):
        session(request).stop()
        return next(counter)

    def on_clear(request: gr.Request):
        session(request).clear()
        return next(counter)

    def setter(name: str, kind: type):
        def update(value, request: gr.Request):
            session(request).update(**{name: kind(value)})

        return update

    def on_system_prompt(prompt, request: gr.Request):
        prompt = (prompt or "").strip() or family.system_prompt
        session(request).update(system_prompt=prompt)
        return gr.Markdown(visible=family.prompt_is_fixed and prompt != family.system_prompt)

    def on_load(request: gr.Request):
        full = sessions.page_loaded(request.session_hash)
        return gr.Markdown(f"### ⏳ {full}", visible=True) if full else gr.skip()

    def on_unload(request: gr.Request):
        sessions.close(request.session_hash)

    with gr.Blocks(title=f"{family.name} live", delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            f"# {family.name}, live\nPress **Record** and talk (turn the camera on if you like): the answer starts "
            "as soon as you pause, in text and speech; speak on before it plays and your turn simply goes on. "
            "Talk over it to cut in. You can also type or upload.\n\n"
            "Browsers allow the microphone and the camera only on `localhost` or over https."
        )
        gr.Markdown(f"**Model:** {loaded.describe()}", elem_id="model-status")
        full_notice = gr.Markdown(visible=False, elem_id="full")  # a page past `max_tabs` says so here
        for note in loaded.notes:
            gr.Markdown(f"> ⚠️ **{note}**", elem_id="model-notice")
        with gr.Row():
            with gr.Column(scale=2):
                camera = gr.Image(
                    sources=["webcam"],
                    streaming=True,
                    webcam_options=gr.WebcamOptions(mirror=False, constraints={"video": {"width": 640, "height": 480}}),
                    label="Camera (optional)",
                    elem_id="camera",
                )
                mic = gr.Audio(sources=["microphone"], streaming=True, label="Microphone", elem_id="mic")
                hearing = gr.Markdown("Press Record to talk.", elem_id="hearing")
                clear = gr.Button("Clear conversation", elem_id="clear")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat")
                player = gr.HTML(
                    value="",
                    html_template=PLAYER_HTML,
                    js_on_load=player_script(),
                    elem_id="player",
                )
                with gr.Row(equal_height=True):
                    status = gr.Markdown("Ready: press Record to talk, or type.", elem_id="status")
                    # Beside the answer, away from the microphone's own Stop (which ends recording).
                    stop = gr.Button("✋ Silence the assistant", elem_id="stop", scale=0, min_width=240, size="sm")
                box = gr.MultimodalTextbox(
                    file_types=UPLOAD_TYPES,
                    file_count="multiple",
                    placeholder="Type a message, or attach an audio file, an image or a video…",
                    show_label=False,
                    elem_id="message",
                )
        gr.Examples(
            examples=[[example] for example in EXAMPLES],
            inputs=[box],
            example_labels=EXAMPLE_LABELS,
            label="Nothing to say? Try one of these (it goes into the message box: press Enter to send)",
            elem_id="examples",
            cache_examples=False,  # Spaces would otherwise run the model on each at start-up
        )
        last_turn = gr.Markdown("", elem_id="timings")
        timeline = gr.BarPlot(
            None, x="turn", y="seconds", color="stage", color_map=STAGES, colors_in_legend=list(STAGES),
            label="The last turns, from the end of your voice", x_title="turn", y_title="seconds",
            elem_id="timeline-plot",
        )
        turn_figures = gr.HTML(figures([]), elem_id="timeline-panel")
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            voice = gr.Dropdown(choices=loaded.voice_names, value=defaults.voice, label="Voice")
            text_only = gr.Checkbox(label="Text-only answers (no speech)", value=defaults.text_only)
            system_prompt = gr.Textbox(value=defaults.system_prompt, lines=3, label="System prompt")
            prompt_warning = gr.Markdown(PROMPT_WARNING, visible=False, elem_id="prompt-warning")
            max_new_tokens = gr.Slider(4, 1024, value=defaults.max_new_tokens, step=4, label="Maximum answer length (tokens)")
            temperature = gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
            silence = gr.Slider(0.3, 1.5, value=defaults.silence_seconds, step=0.05, label="Silence that ends your turn (s)")
            resume = gr.Slider(0.0, 3.0, value=defaults.continue_seconds, step=0.1,
                               label="Speak again within this long, before the answer plays, and your turn goes on (s)")
            seed = gr.Textbox(value="", placeholder="random", max_lines=1, elem_id="seed",
                              label="Seed (empty: random; a number: the same question gets the same speech)")
        trigger = gr.Number(value=0, visible=False)

        mic.stream(on_mic, [mic], [trigger, hearing], stream_every=MIC_CHUNK_SECONDS, concurrency_limit=None,
                   show_progress="hidden", api_visibility="private")
        camera.stream(on_frame, [camera], [], stream_every=CAMERA_FRAME_SECONDS, concurrency_limit=None,
                      show_progress="hidden", api_visibility="private")
        trigger.change(follow, None, [chatbot, player, status, last_turn, turn_figures, timeline],
                       trigger_mode="always_last", concurrency_limit=None, show_progress="hidden", api_visibility="private")
        box.submit(on_send, [box], [box, trigger], concurrency_limit=None, api_name="send")
        stop.click(on_stop, None, [trigger], concurrency_limit=None, api_name="stop")
        clear.click(on_clear, None, [trigger], concurrency_limit=None, api_name="clear")
        for component, name, kind in ((voice, "voice", str), (text_only, "text_only", bool),
                                      (max_new_tokens, "max_new_tokens", int), (temperature, "temperature", float),
                                      (silence, "silence_seconds", float), (resume, "continue_seconds", float),
                                      (seed, "seed", seed_value)):
            component.change(setter(name, kind), [component], None, concurrency_limit=None, api_visibility="private")
        # Once the prompt is written (Enter or leaving the box), not at every keystroke: each change rebuilds the
        # conversation's caches under the new prompt.
        for done in (system_prompt.submit, system_prompt.blur):
            done(on_system_prompt, [system_prompt], [prompt_warning], concurrency_limit=None, api_visibility="private")
        demo.load(on_load, None, [full_notice], api_visibility="private")
        demo.unload(on_unload)
    # Handlers only buffer and return; the model runs on the app's own worker, so Gradio's queue need not
    # serialise anything.
    demo.queue(default_concurrency_limit=None)
    demo._queue.progress_update_sleep_when_free = PROGRESS_POLL_SECONDS
    pace_queue(0)
    return App(demo, sessions, worker)
