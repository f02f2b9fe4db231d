"""The tiny Qwen3-Omni checkpoint (model/families/qwen3_omni/tiny.py): the released architecture at every depth, the
released weight names, loaded and run by transformers' own Qwen3-Omni classes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from model.families.qwen3_omni import tiny as Q3

RELEASED_TENSORS = 28_010  # in the real checkpoint's 15 shards


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from model.tiny import main

    out = tmp_path_factory.mktemp("qwen3") / "tiny-qwen3-omni"
    assert main(["--family", "qwen3-omni", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def stored(checkpoint) -> dict[str, torch.Tensor]:
    with safe_open(checkpoint / "model.safetensors", "pt") as weights:
        return {name: weights.get_tensor(name) for name in weights.keys()}  # noqa: SIM118 (not a dict)


def test_the_config_the_builder_starts_from_is_the_released_model():
    shapes = Q3.released_shapes(Q3.meta_model(Q3.released_config()))
    assert sum(shape.numel() for shape in shapes.values()) == Q3.RELEASED_PARAMETERS
    assert len(shapes) == RELEASED_TENSORS  # experts one by one, as the shards store them


def test_every_depth_count_and_id_is_the_released_one(checkpoint):
    tiny, real = json.loads((checkpoint / "config.json").read_text()), Q3.released_config()
    widths = {**Q3.THINKER_TEXT_WIDTHS, **Q3.AUDIO_WIDTHS, **Q3.VISION_WIDTHS, **Q3.TALKER_TEXT_WIDTHS,
              **Q3.CODE_PREDICTOR_WIDTHS, **Q3.CODE2WAV_WIDTHS, "thinker_hidden_size": 0, "mrope_section": 0}

    def same_but_widths(ours, theirs, path=""):
        assert ours.keys() == theirs.keys(), path
        for key, value in theirs.items():
            if isinstance(value, dict):
                same_but_widths(ours[key], value, f"{path}.{key}")
            elif key not in widths:
                assert ours[key] == value, f"{path}.{key}"

    same_but_widths(tiny, real)
    assert tiny["thinker_config"]["text_config"]["num_hidden_layers"] == 48
    assert tiny["talker_config"]["speaker_id"] == {"chelsie": 2301, "ethan": 2302, "aiden": 2303}


def test_weights_have_the_released_names_and_transformers_fuses_them(checkpoint, stored):
    from transformers import Qwen3OmniMoeForConditionalGeneration

    assert set(stored) == set(Q3.released_shapes(Q3.meta_model(Q3.tiny_config())))
    released = [  # names the real shards hold (../shared/reference/qwen3-omni-30b-a3b/weights-excerpt.md)
        "thinker.audio_tower.conv_out.weight", "thinker.visual.merger_list.0.mlp.0.weight", "thinker.visual.pos_embed.weight",
        "talker.code_predictor.lm_head.0.weight", "talker.code_predictor.model.codec_embedding.0.weight",
        "talker.codec_head.weight", "talker.hidden_projection.linear_fc1.weight", "talker.model.codec_embedding.weight",
        "talker.text_projection.linear_fc1.weight", "code2wav.code_embedding.weight",
        "talker.model.layers.19.mlp.experts.127.gate_proj.weight", "talker.model.layers.0.mlp.shared_expert_gate.weight",
        "thinker.model.layers.47.mlp.experts.127.down_proj.weight",
    ]
    assert all(name in stored for name in released)
    assert not any(name.endswith(("gate_up_proj", "experts.down_proj")) for name in stored)
    assert all(tensor.dtype == torch.bfloat16 for tensor in stored.values())

    model, info = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    experts = model.thinker.model.language_model.layers[5].mlp.experts
    prefix = "thinker.model.layers.5.mlp.experts.77"  # held as thinker.model.language_model.layers.5...
    gate, up, down = (stored[f"{prefix}.{part}.weight"].float() for part in ("gate_proj", "up_proj", "down_proj"))
    assert torch.equal(experts.gate_up_proj[77], torch.cat([gate, up]))
    assert torch.equal(experts.down_proj[77], down)


def test_the_build_repeats_bit_for_bit(stored, tmp_path):
    again = Q3.build(tmp_path / "again")
    with safe_open(again / "model.safetensors", "pt") as weights:
        for name in ("thinker.model.embed_tokens.weight", "talker.model.layers.3.mlp.experts.9.up_proj.weight"):
            assert torch.equal(weights.get_tensor(name), stored[name])


def test_tokenizer_has_qwen3_omnis_token_ids(checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    for token_id, (text, _) in Q3.ADDED_TOKENS.items():
        assert tokenizer.convert_tokens_to_ids(text) == token_id
    ids = tokenizer("<|im_start|>user\nHello<|im_end|>").input_ids
    assert ids[0] == 151644 and ids[-1] == 151645 and len(ids) == 5


def test_transformers_generates_speech_with_it(checkpoint):
    from transformers import AutoTokenizer, Qwen3OmniMoeForConditionalGeneration

    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompt = "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    torch.manual_seed(0)
    with torch.no_grad():  # random weights never end: cap both streams
        text, audio = model.generate(
            input_ids=ids, speaker="Ethan", thinker_max_new_tokens=4, talker_max_new_tokens=8,
            thinker_do_sample=False,
        )
    assert text.shape[1] > ids.shape[1]
    assert audio is not None and audio.numel() > 0 and torch.isfinite(audio).all()


def test_load_omni_loads_it_with_its_voices_processor_and_template(qwen3_loaded):
    loaded = qwen3_loaded
    assert loaded.family.name == "Qwen3-Omni" and loaded.is_tiny
    assert loaded.voices == {"Chelsie": {"speaker_id": 2301}, "Ethan": {"speaker_id": 2302}, "Aiden": {"speaker_id": 2303}}
    assert type(loaded.model).__name__ == "Qwen3OmniMoeForConditionalGeneration"
    processor = loaded.processor
    assert (processor.audio_token_id, processor.image_token_id, processor.video_token_id) == (151675, 151655, 151656)
    assert (processor.audio_bos_token_id, processor.vision_bos_token_id) == (151669, 151652)
    prompt = processor.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]}]
    )
    # The Instruct template: no <think> block; the generation prompt is the three tokens the talker's input
    # is built around.
    assert prompt == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "tiny random-weight Qwen3-Omni" in loaded.describe()


def test_a_checkpoint_of_another_model_is_refused_plainly(tmp_path):
    from model.loading import LoadError, load_omni

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LoadError, match="not a Qwen2.5-Omni or Qwen3-Omni checkpoint"):
        load_omni(str(tmp_path), device="cpu")
