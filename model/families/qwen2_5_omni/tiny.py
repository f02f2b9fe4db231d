"""A tiny random-weight Qwen2.5-Omni checkpoint, built offline and deterministically.

    python -m model.tiny DIR

writes a complete checkpoint directory (config, safetensors weights, spk_dict.pt, tokenizer, preprocessor
config, chat template) that `Qwen2_5OmniForConditionalGeneration.from_pretrained(DIR)` loads with nothing
missing or unexpected. It is the released 3B checkpoint's config with every depth kept (so layer indices,
the vision encoder's full-attention layers and the DiT's look-ahead/look-back layers are the real ones) and
every width shrunk, the real token ids, and the real Qwen2.5-Omni tokenizer. Tests and CPU runs load it
through exactly the code path that loads the real 7B and 3B.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from model import constants as C
from model.families.tiny_parts import MARKER_FILE, init_tensor, qwen2_bpe_dir, seeded_normal

SEED = 20250326  # Qwen2.5-Omni's release date; any fixed value works

# Widths of the tiny model; everything not named here (depths, token ids, rates, vocabularies, mel sizes,
# the speaker vector size) is the released 3B's. Head dims are 16, so every rope section is the real one
# scaled by 16/128 (thinker) or 16/64 (talker).
THINKER_WIDTHS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
}
AUDIO_WIDTHS = {"d_model": 32, "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "output_dim": 64}
VISION_WIDTHS = {
    "embed_dim": 32,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
}
TALKER_WIDTHS = {
    "embedding_size": 64,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rope_scaling": {"mrope_section": [4, 4, 0], "rope_type": "default", "type": "default"},
}
# The released file names the DiT's width, depth and heads with legacy keys that transformers 5 ignores
# (its defaults happen to be the real values), so the tiny widths go under both names.
DIT_WIDTHS = {
    "dim": 32,
    "hidden_size": 32,
    "heads": 2,
    "num_attention_heads": 2,
    "head_dim": 16,
    "emb_dim": 16,
    "enc_dim": 16,
    "enc_channels": [32, 32, 32, 32, 96],
    "enc_attention_channels": 16,
    "enc_se_channels": 16,
}
BIGVGAN_WIDTHS = {"upsample_initial_channel": 128}  # six halvings leave 2 channels

TOKENIZER_FILES = ("added_tokens.json", "special_tokens_map.json", "tokenizer_config.json")
PROCESSOR_FILES = ("preprocessor_config.json", "chat_template.json")


def tiny_config() -> dict:
    """The released 3B config.json with tiny widths."""
    config = json.loads((C.REFERENCE_3B_DIR / "config.json").read_text())
    tiny = copy.deepcopy(config)
    thinker = tiny["thinker_config"]
    thinker["text_config"].update(THINKER_WIDTHS)
    thinker["audio_config"].update(AUDIO_WIDTHS)
    thinker["vision_config"].update(VISION_WIDTHS)
    tiny["talker_config"].update(TALKER_WIDTHS)
    tiny["token2wav_config"]["dit_config"].update(DIT_WIDTHS)
    tiny["token2wav_config"]["bigvgan_config"].update(BIGVGAN_WIDTHS)
    # The weights are written in float32; say so rather than claim the real checkpoint's bfloat16.
    for part in (tiny, thinker, tiny["talker_config"]):
        part["torch_dtype"] = "float32"
    return tiny


# Directions of the talker's residual stream that the tiny talker reserves (see _shape_talker).
_CONSTANT_DIM = 0  # always positive at the last layer: carries a large negative logit for non-DiT codes
_PAD_DIM = 1  # nonzero only where the talker is fed the text-PAD embedding: makes it end with codec EOS
_THINKER_PAD_DIM = 0  # thinker embedding direction that only the text-PAD token has


@torch.no_grad()
def _shape_talker(model) -> None:
    """Make the random talker speak only codes the DiT can embed, and stop when the text does.

    transformers' token2wav fails on any code >= 8193, and a random talker picks from all 8448. The last
    layer writes a constant into one residual direction (a value head with zero weights outputs exactly its
    bias, since attention weights sum to one); every other writer to that direction is zeroed, so after the
    final RMS norm it is positive for every input, and the codec head gives every code outside the DiT's
    range a large negative weight on it. Likewise a second direction is fed only by the thinker embedding of
    the talker's text-PAD token, which transformers feeds once the answer's text is over, and it votes for
    codec EOS, so the tiny talker's speech ends with its text like the real talker's.
    """
    thinker_embed = model.thinker.get_input_embeddings().weight
    thinker_embed[:, _THINKER_PAD_DIM] = 0.0
    thinker_embed[C.TALKER_TEXT_PAD_ID, _THINKER_PAD_DIM] = 1.0
    model.thinker.model.language_model.norm.weight[_THINKER_PAD_DIM] = 0.0  # last hidden states never carry it

    talker = model.talker
    talker.model.embed_tokens.weight[:, _THINKER_PAD_DIM] = 0.0
    proj = talker.thinker_to_talker_proj
    for dim in (_CONSTANT_DIM, _PAD_DIM):
        proj.weight[dim] = 0.0
        proj.bias[dim] = 0.0
    proj.weight[_PAD_DIM, _THINKER_PAD_DIM] = 50.0

    layers = talker.model.layers
    for layer in layers:
        for dim in (_CONSTANT_DIM, _PAD_DIM):
            layer.self_attn.o_proj.weight[dim] = 0.0
            layer.mlp.down_proj.weight[dim] = 0.0
            layer.input_layernorm.weight[dim] = 0.0  # the layers themselves ignore both directions
            layer.post_attention_layernorm.weight[dim] = 0.0

    last = layers[-1].self_attn
    head_dim = last.head_dim
    last.v_proj.weight[:head_dim] = 0.0
    last.v_proj.bias[:head_dim] = 1.0
    constant = 20.0  # of the order of the residual stream's norm, so other directions keep their spread
    last.o_proj.weight[_CONSTANT_DIM, :head_dim] = constant / head_dim  # query head 0 reads value head 0

    head = talker.codec_head.weight
    head[:, _CONSTANT_DIM] = 0.0
    head[:, _PAD_DIM] = 0.0
    head[C.DIT_NUM_EMBEDS :, _CONSTANT_DIM] = -100.0
    head[C.CODEC_EOS_ID, _CONSTANT_DIM] = -1.0  # an EOS is allowed, just unlikely mid-answer
    head[C.CODEC_EOS_ID, _PAD_DIM] = 200.0


def build_model(config_dict: dict | None = None):
    from transformers import AutoConfig, Qwen2_5OmniForConditionalGeneration

    config = AutoConfig.for_model(**(config_dict or tiny_config()))
    model = Qwen2_5OmniForConditionalGeneration(config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(init_tensor(name, param.shape, SEED))
    _shape_talker(model)
    return model


def speaker_dict() -> dict:
    """Voices in the released `spk_dict.pt` format: a BOS text token, a DiT speaker vector, a reference mel."""
    voices = {}
    for name, bos in C.VOICE_BOS_IDS.items():
        voices[name] = {
            "bos_token": bos,
            "cond": seeded_normal(f"spk.{name}.cond", torch.Size([1, C.SPEAKER_COND_DIM]), 1.0, SEED),
            # log-mel values around the range real speech has
            "ref_mel": seeded_normal(
                f"spk.{name}.ref_mel", torch.Size([1, C.SPEAKER_REF_MEL_FRAMES, C.MEL_BINS_OUT]), 2.0, SEED
            )
            - 6.0,
        }
    return voices


def write_tokenizer_files(out: Path) -> None:
    bpe = qwen2_bpe_dir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(bpe / name, out / name)
    for name in TOKENIZER_FILES + PROCESSOR_FILES + ("generation_config.json",):
        shutil.copyfile(C.REFERENCE_3B_DIR / name, out / name)


def _add_released_buffers(model, weights_file: Path) -> None:
    """The released files also store the DiT's rotary inv_freq (a buffer transformers recomputes); so do we,
    so that the tiny checkpoint's weight names are exactly the real ones."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights_file)
    rotary = model.token2wav.code2wav_dit_model.rotary_embed
    tensors["token2wav.code2wav_dit_model.rotary_embed.inv_freq"] = rotary.inv_freq.detach().clone().contiguous()
    save_file(tensors, weights_file, metadata={"format": "pt"})


def build(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model()
    model.save_pretrained(out, safe_serialization=True)
    _add_released_buffers(model, out / "model.safetensors")
    # save_pretrained writes the in-memory config; keep the released file's shape and legacy DiT keys.
    (out / "config.json").write_text(json.dumps(tiny_config(), indent=2) + "\n")
    torch.save(speaker_dict(), out / "spk_dict.pt")
    write_tokenizer_files(out)
    (out / MARKER_FILE).write_text(json.dumps({"seed": SEED, "random_weights": True}) + "\n")
    (out / "README.md").write_text(
        "# tiny-random-qwen2.5-omni\n\nRandom weights with the Qwen2.5-Omni-3B architecture at tiny widths, "
        "written by `python -m model.tiny`. It produces noise, not answers: it exists to exercise the real "
        "loading, processing and generation code without the real weights.\n"
    )
    return out
