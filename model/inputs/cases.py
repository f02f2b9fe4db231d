"""The input cases every check runs: the reference harness, the tests, the command line and the benchmark.

Media come from `assets/` (made by `assets/make_assets.py`): a spoken question, a picture, a short video
with and without its sound track.
"""

from __future__ import annotations

from pathlib import Path

from model.inputs.conversation import Audio, Conversation, Image, Text, Video
from model.inputs.media import load_audio, load_image, load_video

ASSETS = Path(__file__).resolve().parents[2] / "assets"

SPOKEN_QUESTION = ASSETS / "question.wav"
PICTURE = ASSETS / "scene.png"
VIDEO_WITH_SOUND = ASSETS / "clip_with_audio.mp4"
VIDEO_SILENT = ASSETS / "clip_silent.mp4"

FIRST_QUESTION = "What is the capital of France?"
FOLLOW_UP = "And how many people live there?"


def text_case() -> Conversation:
    conversation = Conversation()
    conversation.add_user(Text(FIRST_QUESTION))
    return conversation


def audio_case() -> Conversation:
    conversation = Conversation()
    conversation.add_user(Audio(load_audio(SPOKEN_QUESTION)))
    return conversation


def image_case() -> Conversation:
    conversation = Conversation()
    conversation.add_user(Image(load_image(PICTURE)), Text("What is in this picture?"))
    return conversation


def video_with_sound_case() -> Conversation:
    conversation = Conversation()
    conversation.add_user(Video(load_video(VIDEO_WITH_SOUND)))
    return conversation


def silent_video_case() -> Conversation:
    conversation = Conversation()
    conversation.add_user(Video(load_video(VIDEO_SILENT, with_audio=False)), Text("What happens in this video?"))
    return conversation


def second_turn_case(first_answer: str) -> Conversation:
    """A follow-up after the text case, whose answer was `first_answer`."""
    conversation = text_case()
    conversation.add_assistant(first_answer)
    conversation.add_user(Text(FOLLOW_UP))
    return conversation


SINGLE_TURN_CASES = {
    "text": text_case,
    "audio": audio_case,
    "image": image_case,
    "video_with_sound": video_with_sound_case,
    "silent_video": silent_video_case,
}
