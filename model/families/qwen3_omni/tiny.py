"""A tiny random-weight Qwen3-Omni checkpoint, built offline and deterministically.

    python -m model.tiny --family qwen3-omni DIR

It is the released Qwen3-Omni-30B-A3B config (model/configs/qwen3-omni-30b-a3b/config.as-loaded.json, as
transformers loaded the real checkpoint: 35,259,818,545 parameters) with every depth and every count kept
(thinker 48 layers of 128 experts, 8 per token; audio encoder 32 layers; vision encoder 27; talker 20
layers of 128 experts, 6 per token; code predictor 5; code2wav 8) and every width shrunk, the real token
and speaker ids, and the real weight names: experts stored one by one (`...mlp.experts.<e>.gate_proj.weight`),
as the released shards store them and transformers fuses them on loading. Weights are written in bfloat16,
as released; each tensor is drawn from its name alone.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import torch

from model import constants as C
from model.families.tiny_parts import MARKER_FILE, init_tensor, qwen2_bpe_dir

SEED = 20250922  # Qwen3-Omni's release date; any fixed value works
RELEASED_CONFIG = C.CONFIGS_DIR / "qwen3-omni-30b-a3b" / "config.as-loaded.json"
PROCESSOR_FILES = ("chat_template.json", "preprocessor_config.json")
RELEASED_PARAMETERS = 35_259_818_545  # counted from the real safetensors (15 shards, 28,010 tensors)

# Head dims are 16, so each rope section is the real one (head dim 128) scaled by 1/8, rounded to sum 8.
ROPE = {"mrope_section": [3, 3, 2]}
THINKER_TEXT_WIDTHS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 16,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
AUDIO_WIDTHS = {
    "d_model": 32,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "output_dim": 64,
    "downsample_hidden_size": 16,
}
VISION_WIDTHS = {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
TALKER_TEXT_WIDTHS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 8,
    "shared_expert_intermediate_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
CODE_PREDICTOR_WIDTHS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
CODE2WAV_WIDTHS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "codebook_dim": 16,
    "vector_quantization_hidden_dimension": 16,
    "decoder_dim": 32,
}

# Experts as transformers holds them (fused) and as the released files store them (one by one).
_FUSED = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<kind>gate_up_proj|down_proj)$")
# transformers 5 holds the thinker's parts under `thinker.model.`; the released files do not (see
# ../shared/reference/qwen3-omni-30b-a3b/weights-excerpt.md: thinker.audio_tower..., thinker.visual...).
_THINKER_PARTS = (
    ("thinker.model.audio_tower.", "thinker.audio_tower."),
    ("thinker.model.visual.", "thinker.visual."),
    ("thinker.model.language_model.", "thinker.model."),
)


def released_name(name: str) -> str:
    for held, released in _THINKER_PARTS:
        if name.startswith(held):
            return released + name[len(held) :]
    return name


def released_config() -> dict:
    return json.loads(RELEASED_CONFIG.read_text())


def tiny_config() -> dict:
    """The released config with tiny widths."""
    config = copy.deepcopy(released_config())
    thinker, talker = config["thinker_config"], config["talker_config"]
    thinker["text_config"].update(THINKER_TEXT_WIDTHS)
    thinker["text_config"]["rope_parameters"].update(ROPE)
    thinker["audio_config"].update(AUDIO_WIDTHS)
    thinker["vision_config"].update(VISION_WIDTHS)
    talker["text_config"].update(TALKER_TEXT_WIDTHS)
    talker["text_config"]["rope_parameters"].update(ROPE)
    talker["code_predictor_config"].update(CODE_PREDICTOR_WIDTHS)
    talker["thinker_hidden_size"] = THINKER_TEXT_WIDTHS["hidden_size"]
    config["code2wav_config"].update(CODE2WAV_WIDTHS)
    return config


def meta_model(config: dict):
    """Qwen3OmniMoeForConditionalGeneration of `config` on the meta device: shapes without memory."""
    from transformers import AutoConfig, Qwen3OmniMoeForConditionalGeneration

    with torch.device("meta"):
        return Qwen3OmniMoeForConditionalGeneration._from_config(AutoConfig.for_model(**config))


def released_shapes(model) -> dict[str, torch.Size]:
    """Every tensor the checkpoint stores, by its released name: fused experts split one by one."""
    shapes = {}
    for held, tensor in model.state_dict().items():
        name = released_name(held)
        match = _FUSED.match(name)
        if match is None:
            shapes[name] = tensor.shape
            continue
        prefix, experts = match["prefix"], tensor.shape[0]
        if match["kind"] == "gate_up_proj":  # (experts, 2 * intermediate, hidden): gate rows, then up rows
            half = torch.Size([tensor.shape[1] // 2, tensor.shape[2]])
            for e in range(experts):
                shapes[f"{prefix}.{e}.gate_proj.weight"] = shapes[f"{prefix}.{e}.up_proj.weight"] = half
        else:  # (experts, hidden, intermediate)
            for e in range(experts):
                shapes[f"{prefix}.{e}.down_proj.weight"] = tensor.shape[1:]
    return shapes


# Qwen3's special tokens after its 151,643-token BPE vocabulary, then the seven Qwen3-Omni adds
# (../shared/reference/qwen3-omni-30b-a3b/README.md). `True`: special (never split, skipped when decoding).
ADDED_TOKENS = {
    151643: ("<|endoftext|>", True),
    151644: ("<|im_start|>", True),
    151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
    151665: ("<tool_response>", False),
    151666: ("</tool_response>", False),
    151667: ("<think>", False),
    151668: ("</think>", False),
    151669: ("<|audio_start|>", True),
    151670: ("<|audio_end|>", True),
    151671: ("<tts_pad>", True),
    151672: ("<tts_text_bos>", True),
    151673: ("<tts_text_eod>", True),
    151674: ("<tts_text_bos_single>", True),
    151675: ("<|audio_pad|>", True),
}


# The processor's names for the media markers (transformers' Qwen3OmniMoeProcessor reads the same attributes).
MEDIA_TOKEN_NAMES = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}


def tokenizer_config() -> dict:
    decoder = {
        str(i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": special}
        for i, (text, special) in ADDED_TOKENS.items()
    }
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 65536,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
        "extra_special_tokens": MEDIA_TOKEN_NAMES,
    }


# The talker's "text is over" direction (see shape_talker): a thinker embedding column, a text-projection unit,
# a talker hidden dimension.
_PAD_EMBED_DIM, _PAD_UNIT, _PAD_DIM = 63, 127, 63


def shape_talker(tensors: dict[str, torch.Tensor], config: dict) -> None:
    """Make the random talker end its speech when its text does, as the real one does (else it speaks to its
    4096-frame cap: minutes of noise in the app).

    One thinker embedding column is 1 for `<tts_pad>` alone, the token the talker reads once the text is over;
    one text-projection unit reads only it and writes only one talker dimension. Nothing else writes that
    dimension (the codec embeddings, the layers' outputs) and no layer reads it (their norms' weight is 0
    there), so it reaches the final norm untouched, where the codec head gives it a large weight for EOS."""
    talker = config["talker_config"]
    embed = tensors["thinker.model.embed_tokens.weight"]
    embed[:, _PAD_EMBED_DIM] = 0.0
    embed[config["tts_pad_token_id"], _PAD_EMBED_DIM] = 1.0
    fc1, fc2 = "talker.text_projection.linear_fc1", "talker.text_projection.linear_fc2"
    tensors[f"{fc1}.weight"][_PAD_UNIT] = 0.0
    tensors[f"{fc1}.weight"][_PAD_UNIT, _PAD_EMBED_DIM] = 4.0
    tensors[f"{fc1}.bias"][_PAD_UNIT] = 0.0
    tensors[f"{fc2}.weight"][:, _PAD_UNIT] = 0.0
    tensors[f"{fc2}.weight"][_PAD_DIM] = 0.0
    tensors[f"{fc2}.weight"][_PAD_DIM, _PAD_UNIT] = 10.0
    tensors[f"{fc2}.bias"][_PAD_DIM] = 0.0
    for name, tensor in tensors.items():
        if not name.startswith("talker."):
            continue
        if re.search(r"(hidden_projection\.linear_fc2|self_attn\.o_proj|down_proj)\.weight$", name) and "code_predictor" not in name:
            tensor[_PAD_DIM] = 0.0  # no writer
        elif name.endswith("hidden_projection.linear_fc2.bias"):
            tensor[_PAD_DIM] = 0.0
        elif re.search(r"codec_embedding(\.\d+)?\.weight$", name):
            tensor[:, _PAD_DIM] = 0.0  # the code embeddings summed into the talker's input
        elif re.search(r"^talker\.model\.layers\.\d+\.(input|post_attention)_layernorm\.weight$", name):
            tensor[_PAD_DIM] = 0.0  # no reader
    tensors["talker.model.norm.weight"][_PAD_DIM] = 1.0
    head = tensors["talker.codec_head.weight"]
    head[:, _PAD_DIM] = 0.0
    head[talker["codec_eos_token_id"], _PAD_DIM] = 20.0


def build(out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    shapes = released_shapes(meta_model(config))
    tensors = {name: init_tensor(name, shape, SEED) for name, shape in sorted(shapes.items())}
    shape_talker(tensors, config)
    tensors = {name: tensor.to(torch.bfloat16) for name, tensor in tensors.items()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    bpe = qwen2_bpe_dir()  # Qwen3 keeps Qwen2's byte-level BPE
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(bpe / name, out / name)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    for name in PROCESSOR_FILES:  # the Instruct chat template and the processor's settings (see the configs' README)
        shutil.copyfile(RELEASED_CONFIG.parent / name, out / name)
    (out / MARKER_FILE).write_text(json.dumps({"seed": SEED, "random_weights": True, "family": "qwen3-omni"}) + "\n")
    (out / "README.md").write_text(
        "# tiny-random-qwen3-omni\n\nRandom weights with the Qwen3-Omni-30B-A3B architecture at tiny widths (every "
        "depth and expert count kept), written by `python -m model.tiny --family qwen3-omni`. It produces noise, "
        "not answers: it exists to exercise the real loading and generation code without the real weights.\n"
    )
    return out
