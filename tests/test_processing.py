"""OmniProcessor and the torch-only video preprocessing, pinned to transformers' own code.

transformers' `Qwen2_5OmniProcessor` runs here once its video processor (which needs torchvision) is replaced
by a stand-in, so the prompt expansion, audio features, image patches, keys and dtypes are compared with
transformers' code itself. The stand-in runs our video code at the size transformers asks for; our video
tensors are pinned separately: their patch layout against transformers' image processor, their resize
against PIL's and torch's bicubic, and exactly against `Qwen2VLVideoProcessor` where torchvision imports.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from model import constants as C
from model.families.qwen2_5_omni.processing import OmniProcessor, audio_token_count, video_audio_layout
from model.inputs.video_frames import VideoFrameProcessor, resize_frames, resize_frames_float, smart_resize

RNG_SEED = 1234
SYSTEM = {"role": "system", "content": [{"type": "text", "text": C.AUDIO_SYSTEM_PROMPT}]}


@pytest.fixture(scope="session")
def processor_dir(tmp_path_factory):
    """A checkpoint's processor files (tokenizer, preprocessor config, chat template) and its config.json."""
    from model.families.qwen2_5_omni.tiny import tiny_config, write_tokenizer_files

    directory = tmp_path_factory.mktemp("processor")
    write_tokenizer_files(directory)
    (directory / "config.json").write_text(json.dumps(tiny_config()))
    return directory


@pytest.fixture(scope="session")
def ours(processor_dir) -> OmniProcessor:
    return OmniProcessor.from_pretrained(processor_dir)


@pytest.fixture(scope="session")
def untrimmed(ours) -> OmniProcessor:
    return OmniProcessor(
        ours.tokenizer,
        ours.feature_extractor,
        ours.image_processor,
        ours.video_processor,
        ours.chat_template,
        trim_audio_padding=False,
    )


class VideoStandIn:
    """Takes the place of `Qwen2VLVideoProcessor` in transformers' processor: our video code, run at the pixel
    budget transformers passes, with every call's keyword arguments kept for inspection."""

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, frames: VideoFrameProcessor):
        self.frames = frames
        self.temporal_patch_size = frames.temporal_patch_size
        self.merge_size = frames.merge_size
        self.calls: list[dict] = []

    def __call__(self, videos, size, return_tensors=None, **kwargs):
        self.calls.append({"size": dict(size), **kwargs})
        from transformers import BatchFeature

        assert not kwargs, f"transformers passed video options the stand-in does not apply: {kwargs}"
        frames = dataclasses.replace(self.frames, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        return BatchFeature(frames(videos), tensor_type=return_tensors)


@pytest.fixture(scope="session")
def reference(ours):
    """transformers' Qwen2_5OmniProcessor itself, over the same tokenizer, feature extractor and image
    processor, with the video stand-in. Only its class check refuses the stand-in; everything else is its own."""
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor

    return transformers_processor(Qwen2_5OmniProcessor, ours)


def transformers_processor(processor_class, ours):
    """transformers' `processor_class` over our processor's tokenizer, feature extractor and image processor,
    with the video stand-in, which only its class check would refuse."""

    class Reference(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            return type(argument)

    return Reference(
        image_processor=ours.image_processor,
        video_processor=VideoStandIn(ours.video_processor),
        feature_extractor=ours.feature_extractor,
        tokenizer=ours.tokenizer,
        chat_template=ours.chat_template,
    )


# ---- media ---------------------------------------------------------------------------------------------


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise under a slow envelope, with silent stretches, at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * C.INPUT_SAMPLE_RATE)
    envelope = np.clip(np.sin(np.linspace(0, 3 * np.pi * seconds, n)), 0, None)
    return (0.3 * envelope * rng.standard_normal(n)).astype(np.float32)


def natural_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Frames with image-like content: smooth blobs (coarse noise upsampled) that drift from frame to frame."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width + 8 * count, height), Image.BILINEAR))
    return np.stack([base[:, 8 * i : 8 * i + width] for i in range(count)])


def noise_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(natural_frames(1, height, width, seed)[0])


def user(*parts) -> dict:
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": p} for p in parts]}


def audio_slots(prompts: list[str]) -> list[int | None]:
    """transformers' `audio_from_video_indices` for use_audio_in_video: the source of each entry of `audio`, in
    prompt order (None: an <|AUDIO|> of its own; i: the sound of video i)."""
    placeholders = re.findall(r"<\|AUDIO\|>|<\|VIDEO\|>", "".join(prompts))
    videos = iter(range(len(placeholders)))
    return [None if token == "<|AUDIO|>" else next(videos) for token in placeholders]


# Each case: conversation(s), audio, images, videos, use_audio_in_video.
CASES = {
    "text": ([[SYSTEM, user({"type": "text", "text": "Hello!"})]], [], [], [], False),
    "audio": ([[SYSTEM, user("audio", {"type": "text", "text": "What?"})]], [speech_like(3.7, 1)], [], [], False),
    "two-images": ([[SYSTEM, user("image", "image")]], [], [image(90, 130, 2), image(400, 300, 3)], [], False),
    "video": ([[SYSTEM, user("video")]], [], [], [natural_frames(7, 120, 200, 4)], False),
    "all-kinds": (
        [[SYSTEM, user("audio", "image", "video", {"type": "text", "text": "and?"})]],
        [speech_like(1.3, 5)],
        [image(200, 200, 6)],
        [natural_frames(4, 180, 320, 7)],
        False,
    ),
    # Audio before the video, then a video whose sound outlasts it and one whose sound ends first.
    "audio-in-video": (
        [[SYSTEM, user("audio", "video", "video", {"type": "text", "text": "Describe."})]],
        [speech_like(2.2, 8), speech_like(6.3, 9), speech_like(1.5, 10)],
        [],
        [natural_frames(9, 120, 160, 11), natural_frames(8, 96, 96, 12)],
        True,
    ),
    "batch": (
        [[SYSTEM, user("audio")], [SYSTEM, user("image", {"type": "text", "text": "longer " * 20})]],
        [speech_like(0.9, 13)],
        [image(60, 80, 14)],
        [],
        False,
    ),
}


def run_both(ours, reference, case):
    conversations, audio, images, videos, use_audio_in_video = case
    prompts = [ours.apply_chat_template(c) for c in conversations]
    kwargs = {}
    if use_audio_in_video:
        kwargs = {"load_audio_from_video": True, "audio_from_video_indices": audio_slots(prompts)}
    theirs = reference(
        text=prompts,
        audio=audio or None,
        images=images or None,
        videos=videos or None,
        padding=True,  # only matters for the batch; transformers leaves it to the caller
        return_tensors="pt",
        **kwargs,
    )
    mine = ours(prompts, audio=audio, images=images, videos=videos, use_audio_in_video=use_audio_in_video)
    return mine, theirs


# ---- tokenizer and template ------------------------------------------------------------------------------


def test_special_token_ids_are_the_real_ones(ours):
    expected = {
        "<|im_start|>": C.IM_START_ID,
        "<|im_end|>": C.IM_END_ID,
        "<|endoftext|>": C.ENDOFTEXT_ID,
        "<|AUDIO|>": C.AUDIO_TOKEN_ID,
        "<|audio_bos|>": C.AUDIO_BOS_ID,
        "<|audio_eos|>": C.AUDIO_EOS_ID,
        "<|vision_bos|>": C.VISION_BOS_ID,
        "<|vision_eos|>": C.VISION_EOS_ID,
        "<|IMAGE|>": C.IMAGE_TOKEN_ID,
        "<|VIDEO|>": C.VIDEO_TOKEN_ID,
    }
    assert {token: ours.tokenizer.convert_tokens_to_ids(token) for token in expected} == expected
    assert len(ours.tokenizer) == 151665  # 151,643 byte-level BPE tokens + the added ones
    properties = (
        ours.audio_token_id,
        ours.audio_bos_token_id,
        ours.audio_eos_token_id,
        ours.image_token_id,
        ours.video_token_id,
        ours.vision_bos_token_id,
        ours.vision_eos_token_id,
        ours.eos_token_id,
        ours.pad_token_id,
    )
    assert properties == (
        C.AUDIO_TOKEN_ID,
        C.AUDIO_BOS_ID,
        C.AUDIO_EOS_ID,
        C.IMAGE_TOKEN_ID,
        C.VIDEO_TOKEN_ID,
        C.VISION_BOS_ID,
        C.VISION_EOS_ID,
        C.IM_END_ID,
        C.ENDOFTEXT_ID,
    )
    assert ours.decode([C.IM_START_ID, 9707, 1879]) == "<|im_start|>Hello world"
    assert ours.batch_decode([[9707], [1879]]) == ["Hello", " world"]


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_renders_as_transformers(ours, reference, generation_prompt):
    conversation = [
        SYSTEM,
        user("audio", "image", {"type": "text", "text": "Both?"}, "video"),
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "A plain string turn."},
    ]
    mine = ours.apply_chat_template(conversation, add_generation_prompt=generation_prompt)
    theirs = reference.apply_chat_template(conversation, add_generation_prompt=generation_prompt, tokenize=False)
    assert mine == theirs
    assert mine.count("<|vision_bos|><|IMAGE|><|vision_eos|>") == 1
    assert mine.endswith("<|im_start|>assistant\n") == generation_prompt
    # Without a system turn the template adds its default one.
    assert ours.apply_chat_template([user({"type": "text", "text": "hi"})]).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>"
    )
    tokens = ours.apply_chat_template(conversation, add_generation_prompt=generation_prompt, tokenize=True)
    assert tokens == ours.tokenizer(mine).input_ids


# ---- the whole call against transformers' processor ------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_call_matches_transformers(ours, reference, name):
    mine, theirs = run_both(ours, reference, CASES[name])
    assert list(mine.keys()) == list(theirs.keys())
    for key, expected in theirs.items():
        got = mine[key]
        assert got.dtype == expected.dtype, key
        if key in ("input_features", "feature_attention_mask"):
            # Ours stop after the longest clip; everything cut off is padding.
            kept = got.shape[-1]
            assert kept == int(theirs["feature_attention_mask"].sum(-1).max())
            assert not theirs["feature_attention_mask"][:, kept:].any()
            expected = expected[..., :kept]
        assert torch.equal(got, expected), key


def test_untrimmed_audio_is_transformers_exactly(untrimmed, reference):
    mine, theirs = run_both(untrimmed, reference, CASES["all-kinds"])
    assert mine["input_features"].shape == (1, 128, 30000)  # 300 s of mel frames, as transformers pads
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs) and mine.keys() == theirs.keys()


def test_trimming_changes_nothing_the_model_reads(ours, untrimmed):
    """The thinker reads audio only as `input_features` under `feature_attention_mask` (get_audio_features
    packs the masked frames, and rope/generate use the mask's sums): both must be identical."""
    audio = [speech_like(0.5, 20), speech_like(4.1, 21), speech_like(2.0, 22)]
    prompt = ours.apply_chat_template([SYSTEM, user("audio", "audio", "audio")])
    short, full = ours(prompt, audio=audio), untrimmed(prompt, audio=audio)
    assert short["input_features"].shape[-1] == 410 < full["input_features"].shape[-1]

    def packed(inputs):
        mask = inputs["feature_attention_mask"].bool()
        return inputs["input_features"].permute(0, 2, 1)[mask]

    assert torch.equal(packed(short), packed(full))
    assert torch.equal(short["feature_attention_mask"].sum(-1), full["feature_attention_mask"].sum(-1))
    assert torch.equal(short["input_ids"], full["input_ids"])


def test_video_budget_is_the_one_transformers_passes(ours, reference, processor_dir):
    run_both(ours, reference, CASES["video"])
    size = reference.video_processor.calls[-1]["size"]
    frames = ours.video_processor
    assert size == {"shortest_edge": frames.min_pixels, "longest_edge": frames.max_pixels} == {
        "shortest_edge": 128 * 28 * 28,
        "longest_edge": 768 * 28 * 28,
    }
    config = json.loads((processor_dir / "preprocessor_config.json").read_text())
    assert (frames.patch_size, frames.temporal_patch_size, frames.merge_size) == (
        config["patch_size"],
        config["temporal_patch_size"],
        config["merge_size"],
    )
    assert list(frames.image_mean) == config["image_mean"] and list(frames.image_std) == config["image_std"]
    assert config["min_pixels"] != frames.min_pixels  # the file's budget is the image one


@pytest.mark.parametrize("fps", [2.0, 1.0, 0.5, 3.0])
@pytest.mark.parametrize("frames, audio_tokens", [(9, 125), (4, 160), (16, 37), (1, 1), (6, 0)])
def test_interleaving_matches_transformers(ours, reference, fps, frames, audio_tokens):
    grid = torch.tensor([[(frames + 1) // 2, 6, 8]])
    seconds_per_grid = 2 / fps
    theirs = reference.replace_video_with_audio_token(
        {"video_grid_thw": grid, "video_second_per_grid": [seconds_per_grid]},
        0,
        {"num_audio_tokens": [audio_tokens]},
        0,
        position_id_per_seconds=25,
        seconds_per_chunk=2.0,
    )
    layout = video_audio_layout(int(grid[0, 0]), 6 * 8 // 4, seconds_per_grid, audio_tokens)
    body = "".join(("<|VIDEO|>" if modality == "video" else "<|AUDIO|>") * n for modality, n in layout)
    assert "<|audio_bos|>" + body + "<|audio_eos|>" == theirs
    assert sum(n for modality, n in layout if modality == "audio") == audio_tokens


def test_interleaving_at_2_fps_is_2_second_windows():
    # 4.5 s of video (5 frame pairs of 12 tokens) and 5 s of sound (125 tokens): windows 0-2 s, 2-4 s, 4- s.
    assert video_audio_layout(5, 12, 1.0, 125) == [
        ("video", 24),
        ("audio", 50),
        ("video", 24),
        ("audio", 50),
        ("video", 12),
        ("audio", 25),
    ]


def test_audio_token_count_matches_transformers():
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

    frames = np.arange(1, 30001)
    assert [audio_token_count(int(n)) for n in frames] == _get_feat_extract_output_lengths(frames).tolist()
    assert audio_token_count(100) == 25  # 1 s -> 25 tokens of 40 ms


def test_rope_index_reads_our_layout(ours):
    """The thinker's get_rope_index walks the prompt with its own chunking: video tokens must get video rope
    ids (time from the frame pair, height/width from the grid) and audio tokens audio ones (t = h = w, +1 each)."""
    from transformers import AutoConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerForConditionalGeneration

    from model.families.qwen2_5_omni.tiny import tiny_config

    with torch.device("meta"):  # get_rope_index needs the config only
        thinker = Qwen2_5OmniThinkerForConditionalGeneration(AutoConfig.for_model(**tiny_config()).thinker_config)
    conversations, audio, _, videos, _ = CASES["audio-in-video"]
    inputs = ours(ours.apply_chat_template(conversations[0]), audio=audio, videos=videos, use_audio_in_video=True)
    positions, _ = thinker.get_rope_index(
        inputs["input_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
        use_audio_in_video=True,
        audio_seqlens=inputs["feature_attention_mask"].sum(-1),
        second_per_grids=inputs["video_second_per_grid"],
    )
    ids, positions = inputs["input_ids"][0], positions[:, 0]
    bos = (ids == C.AUDIO_BOS_ID).nonzero().flatten().tolist()
    eos = (ids == C.AUDIO_EOS_ID).nonzero().flatten().tolist()
    # The standalone audio, then each video's block.
    assert len(bos) == 3 and ids[bos[1] - 1] == ids[bos[2] - 1] == C.VISION_BOS_ID
    for video, (start, end) in enumerate(zip(bos[1:], eos[1:])):
        block, pos = ids[start + 1 : end], positions[:, start + 1 : end]
        origin = int(positions[0, start]) + 1
        is_audio = block == C.AUDIO_TOKEN_ID
        assert bool(((block == C.VIDEO_TOKEN_ID) | is_audio).all())
        audio_pos = pos[:, is_audio]
        assert torch.equal(audio_pos[0], audio_pos[1]) and torch.equal(audio_pos[0], audio_pos[2])
        assert audio_pos[0].tolist() == list(range(origin, origin + int(is_audio.sum())))
        grid_t, grid_h, grid_w = inputs["video_grid_thw"][video].tolist()
        h, w = grid_h // 2, grid_w // 2
        expected = [
            (origin + 25 * t, origin + i, origin + j)
            for t in range(grid_t) for i in range(h) for j in range(w)
        ]
        assert [tuple(p) for p in pos[:, ~is_audio].T.tolist()] == expected


@pytest.mark.parametrize(
    "audio, images, videos, prompt_parts",
    [
        ([], [], [], ["audio"]),
        ([speech_like(1, 0)], [], [], []),
        ([], [image(56, 56, 0)], [], ["image", "image"]),
        ([], [], [noise_frames(2, 56, 56, 0)], ["video", "video"]),
    ],
)
def test_placeholder_and_media_counts_must_agree(ours, audio, images, videos, prompt_parts):
    prompt = ours.apply_chat_template([user(*prompt_parts)])
    with pytest.raises(ValueError):
        ours(prompt, audio=audio, images=images, videos=videos)


def test_a_video_without_its_sound_cannot_interleave(ours):
    prompt = ours.apply_chat_template([user("video")])
    with pytest.raises(ValueError, match="as its sound"):
        ours(prompt, videos=[noise_frames(2, 56, 56, 0)], use_audio_in_video=True)


def test_video_fps_sets_seconds_per_grid(ours):
    prompt = ours.apply_chat_template([user("video", "video")])
    videos = [noise_frames(2, 56, 56, 0), noise_frames(3, 56, 56, 1)]
    assert ours(prompt, videos=videos)["video_second_per_grid"].tolist() == [1.0, 1.0]
    assert ours(prompt, videos=videos, video_fps=[1.0, 4.0])["video_second_per_grid"].tolist() == [2.0, 0.5]


# ---- video tensors ---------------------------------------------------------------------------------------


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as theirs

    sizes = [(h, w) for h in (28, 42, 70, 100, 126, 333, 480, 720, 1080, 4000) for w in (28, 56, 98, 640, 1281, 1920)]
    for budget in ((128 * 28 * 28, 768 * 28 * 28), (3136, 12845056)):
        for h, w in sizes:
            assert smart_resize(h, w, 28, *budget) == theirs(h, w, 28, *budget), (h, w, budget)
    with pytest.raises(ValueError):
        smart_resize(10, 2500, 28, 3136, 12845056)  # more elongated than 200:1


def test_patch_layout_matches_transformers_image_processor(ours):
    """transformers' image processor lays out one frame exactly as the video processor lays out a frame pair
    (it repeats the frame as the pair). At a size that needs no resize, each frame of our pair must equal the
    image processor's patches of that frame, row for row."""
    frames = ours.video_processor
    height, width = 336, 308  # multiples of 28, inside both budgets: neither side resizes
    video = natural_frames(4, height, width, 30)
    patches, grid = frames.preprocess_video(video)
    assert grid == (2, height // 14, width // 14)
    rows = grid[1] * grid[2]
    pairs = patches.reshape(2, rows, 3, 2, 14, 14)
    for index in range(4):
        theirs = ours.image_processor([Image.fromarray(video[index])], return_tensors="pt")
        assert theirs["image_grid_thw"].tolist() == [[1, grid[1], grid[2]]]
        expected = theirs["pixel_values"].reshape(rows, 3, 2, 14, 14)[:, :, 0]
        # Same layout; the values differ only by float rounding (numpy float64 rescale there, torch float32 here).
        torch.testing.assert_close(pairs[index // 2, :, :, index % 2], expected, rtol=0, atol=2e-6)


def test_normalisation_is_transformers_fused_form(ours, monkeypatch):
    """transformers' own rescale_and_normalize (the video processor's), run with torchvision's `normalize`
    written out (on a float tensor it is `sub(mean).div_(std)` per channel): bit-identical to ours."""
    import transformers.image_processing_backends as backends

    class FunctionalStandIn:
        @staticmethod
        def normalize(tensor, mean, std, inplace=False):
            mean = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
            std = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
            return (tensor.sub_(mean) if inplace else tensor.sub(mean)).div_(std)

    monkeypatch.setattr(backends, "tvF", FunctionalStandIn, raising=False)
    frames = ours.video_processor
    pixels = torch.from_numpy(noise_frames(2, 28, 56, 70)).permute(0, 3, 1, 2).contiguous()
    backend = backends.TorchvisionBackend.__new__(backends.TorchvisionBackend)
    theirs = backend.rescale_and_normalize(
        pixels[None], True, frames.rescale_factor, True, frames.image_mean, frames.image_std
    )[0]
    mine = frames.normalize(pixels)
    assert mine.dtype == theirs.dtype == torch.float32
    assert torch.equal(mine, theirs)
    mean = torch.tensor(frames.image_mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(frames.image_std, dtype=torch.float64).view(-1, 1, 1)
    torch.testing.assert_close(mine.double(), (pixels.double() / 255 - mean) / std, rtol=0, atol=1e-6)


def test_odd_frame_count_repeats_the_last_frame(ours):
    video = natural_frames(3, 100, 150, 40)
    odd, grid = ours.video_processor.preprocess_video(video)
    even, _ = ours.video_processor.preprocess_video(np.concatenate([video, video[-1:]]))
    assert grid[0] == 2 and torch.equal(odd, even)
    assert ours.video_processor.num_tokens(3, 100, 150) == odd.shape[0] // 4


def test_video_output_shapes_and_grids(ours):
    videos = [natural_frames(5, 120, 200, 41), noise_frames(2, 720, 1280, 42)]
    out = ours.video_processor(videos)
    assert out["video_grid_thw"].dtype == torch.int64 and out["pixel_values_videos"].dtype == torch.float32
    grids = out["video_grid_thw"].tolist()
    assert grids == [list(ours.video_processor.grid_thw(len(v), *v.shape[1:3])) for v in videos]
    assert out["pixel_values_videos"].shape == (sum(t * h * w for t, h, w in grids), 3 * 2 * 14 * 14)
    for t, h, w in grids:  # every frame inside the video budget
        assert 128 * 28 * 28 <= h * w * 14 * 14 <= 768 * 28 * 28


@pytest.mark.parametrize("size", [(1080, 1920), (480, 640), (120, 200)])  # shrink, about 1:1, enlarge
def test_resize_against_pil_and_torch_float_bicubic(ours, size):
    """Our resize is torchvision's CPU path (the uint8 antialiased bicubic kernel). PIL's BICUBIC is an
    independent implementation of the same filter; torch's float path is torchvision's GPU one."""
    new_size = ours.video_processor.resized_size(*size)
    frame = natural_frames(1, *size, seed=50)[0]
    tensor = torch.from_numpy(frame).permute(2, 0, 1).contiguous()[None]
    mine = resize_frames(tensor, *new_size).int()
    pil = np.asarray(Image.fromarray(frame).resize(new_size[::-1], Image.BICUBIC))
    pil = torch.from_numpy(pil.copy()).permute(2, 0, 1)[None].int()
    assert (mine - pil).abs().max() <= 2
    assert (mine != pil).float().mean() < 0.05
    floating = resize_frames_float(tensor, *new_size).int()
    assert (mine - floating).abs().max() <= 1  # image-like content: the cubic's overshoot stays inside 0..255
    assert (mine - floating).abs().float().mean() < 0.3


def test_video_tensors_equal_transformers_video_processor(processor_dir, ours):
    """Exact, where torchvision can be imported (not on the CPU-only machines this project targets)."""
    pytest.importorskip("torchvision")
    from transformers import Qwen2_5OmniProcessor, Qwen2VLVideoProcessor

    videos = [natural_frames(7, 120, 200, 60), noise_frames(4, 480, 640, 61), natural_frames(1, 300, 90, 62)]
    theirs = Qwen2VLVideoProcessor.from_pretrained(processor_dir)(
        videos, size={"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}, return_tensors="pt"
    )
    mine = ours.video_processor(videos)
    assert torch.equal(mine["video_grid_thw"], theirs["video_grid_thw"])
    assert torch.equal(mine["pixel_values_videos"], theirs["pixel_values_videos"])

    processor = Qwen2_5OmniProcessor.from_pretrained(processor_dir)
    conversations, audio, images, videos, _ = CASES["all-kinds"]
    prompt = ours.apply_chat_template(conversations[0])
    theirs = processor(text=prompt, audio=audio, images=images, videos=videos, return_tensors="pt")
    mine = OmniProcessor.from_pretrained(processor_dir)
    mine.trim_audio_padding = False
    mine = mine(prompt, audio=audio, images=images, videos=videos)
    assert list(mine.keys()) == list(theirs.keys())
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
