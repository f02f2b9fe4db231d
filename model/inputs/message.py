"""A user's message as model parts: typed text and uploaded files, checked and decoded, or refused with a
message for the user (a `UserInputError`, a `MediaError` for files)."""

from __future__ import annotations

from pathlib import Path

from model.inputs.conversation import Audio, Image, Part, Text, Video
from model.inputs.limits import MAX_FILES_PER_MESSAGE, MAX_MESSAGE_BYTES, MAX_VIDEOS_PER_MESSAGE, MIB, UserInputError
from model.inputs.media import load_audio, load_image, load_video, media_kind
from model.inputs.prompt_text import check_user_text

NOTHING_TO_ANSWER = "Say, type or upload something first."


def parts_from_files(paths: list[str]) -> list[Part]:
    """Decode uploads into model parts, each by its content (not its name).

    Every check that can come before decoding does (model.inputs.limits: size, declared duration, header pixels);
    a MediaError names the file and says what is wrong with it in one sentence.
    """
    if len(paths) > MAX_FILES_PER_MESSAGE:
        raise UserInputError(f"One message can carry at most {MAX_FILES_PER_MESSAGE} files; this one has "
                             f"{len(paths)}. Send them in a few messages.")
    total = sum(Path(path).stat().st_size for path in paths if Path(path).is_file())
    if total > MAX_MESSAGE_BYTES:
        raise UserInputError(f"These files add up to {total / MIB:.1f} MB; one message can carry at most "
                             f"{MAX_MESSAGE_BYTES / MIB:.0f} MB. Send them in a few messages.")
    kinds = [media_kind(path) for path in paths]  # headers only
    if kinds.count("video") > MAX_VIDEOS_PER_MESSAGE:
        raise UserInputError(f"One message can carry at most {MAX_VIDEOS_PER_MESSAGE} videos; this one has "
                             f"{kinds.count('video')}. Send them in a few messages.")
    parts: list[Part] = []
    for path, kind in zip(paths, kinds):
        if kind == "audio":
            parts.append(Audio(load_audio(path)))
        elif kind == "image":
            parts.append(Image(load_image(path)))
        else:
            parts.append(Video(load_video(path)))
    return parts


def parts_from_message(text: str, paths: list[str]) -> list[Part]:
    """A user's message (typed text and uploaded files) as model parts: the files first, then the text, as
    the official examples order them. A UserInputError (MediaError for files) says why not."""
    text = check_user_text(text)
    parts = parts_from_files(paths)
    if text.strip():
        parts.append(Text(text))
    if not parts:
        raise UserInputError(NOTHING_TO_ANSWER)
    return parts
