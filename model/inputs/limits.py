"""What one message or upload may hold: every limit in one place, with its unit in its name.

Each limit is checked before the expensive step it protects (file size before opening, the container's
declared duration and the image header's size before decoding) and again while decoding, so a file whose
header lies still cannot make the app hold more than the limit allows. Messages for users come from
`model.inputs.media` (files) and `model.inputs.prompt_text` (typed text).
"""

from __future__ import annotations

MIB = 1024**2

# Any one uploaded file. Gradio enforces the same number on upload (app.py passes it as max_file_size).
MAX_UPLOAD_BYTES = 200 * MIB

# The processor computes audio features in one 300 s window (preprocessor_config.json `chunk_length`) and
# silently cuts what is longer, so longer audio would be half-heard: refuse it instead.
MAX_AUDIO_SECONDS = 300.0
# One thinker audio token per 40 ms, and a clip under 25 ms gives none at all (the processor then has
# features but no placeholder for them); 0.1 s is a few tokens, and shorter is a click, not speech.
MIN_AUDIO_SECONDS = 0.1
# Decoding may run this far past a declared duration (encoder padding, priming) before it is cut off.
DECODE_SLACK_SECONDS = 1.0

# Video: the official memory table stops at 60 s (7B needs about 60 GB for it), and at the processor's
# frame budget (up to 768 tokens per frame pair, 2 fps) a minute already fills half the 32k-position
# context the session allows one input.
MAX_VIDEO_SECONDS = 60.0
# Frames are kept at their source size until the processor resizes them (2 fps, so at most 120 frames
# for a minute): 4K UHD keeps that under 3 GB, larger frames are refused from the stream header.
MAX_VIDEO_FRAME_PIXELS = 3840 * 2160
# Decoding every packet is what pass 2 costs: 60 s of 240 fps slow motion is the most we decode.
MAX_VIDEO_SOURCE_FPS = 240.0

# Images: a 48-megapixel phone photo fits; the processor shrinks every image to at most 12.8 MP anyway.
# Checked from the header (Image.open reads only that), before the pixels are decoded.
MAX_IMAGE_PIXELS = 64_000_000

# transformers' smart_resize refuses images and frames more elongated than this (checked from the header).
MAX_ASPECT_RATIO = 200

# Typed text: about 2,000-8,000 tokens (1-4 characters per token), well inside the context the session
# allows one input (half of 32,768 positions).
MAX_TEXT_CHARS = 8_000


class UserInputError(ValueError):
    """Something a user sent that the app cannot use; the message is one sentence meant for them."""

# The files of one message are all decoded, and held, before any of them reaches the model: a 60 s 4K video
# is held at about 3 GB. So a message carries a few files, at most two of them videos, of a bounded total
# size; the count and the size are checked before any file is opened, the videos from the headers (media_kind)
# before any is decoded.
MAX_FILES_PER_MESSAGE = 4
MAX_VIDEOS_PER_MESSAGE = 2
MAX_MESSAGE_BYTES = 400 * MIB

# A live turn may take what one upload may: half of the positions, so that, the older turns dropped, the
# answer still has the other half. It is ended a little before that: its last window and its closing go in
# after the bound is seen.
LIVE_TURN_SHARE = 0.45
# Per 2 s live window: <|audio_bos|>, <|audio_eos|>, and with the camera <|vision_bos|>, <|vision_eos|>.
LIVE_WINDOW_MARKERS = 4
# smart_resize rounds each side of a frame to whole patches: a frame can cost this much more than its pixels.
FRAME_ROUNDING_MARGIN = 1.15
MEL_FRAMES_PER_SECOND = 100  # the audio features' 10 ms hop


def live_turn_seconds(processor, max_positions: int, camera_pixels: int = 0) -> float:
    """The longest live turn, in seconds, that stays within `LIVE_TURN_SHARE` of `max_positions`: audio at the
    processor's own token rate (averaged over 8 s, Qwen3-Omni's encoder group) and, with the camera, one frame
    pair a second (2 fps) of at most `camera_pixels`."""
    per_second = processor.audio_tokens(8 * MEL_FRAMES_PER_SECOND) / 8 + LIVE_WINDOW_MARKERS / 2
    if camera_pixels:
        video = processor.video_processor
        per_second += FRAME_ROUNDING_MARGIN * camera_pixels / (video.patch_size * video.merge_size) ** 2
    return LIVE_TURN_SHARE * max_positions / per_second
