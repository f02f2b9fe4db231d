"""Fidelity of the tiny checkpoint to the released ones: names, shapes of the files, token ids, sizes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model import constants as C
from model.families.qwen2_5_omni.loading import load_model_weights
from model.families.qwen2_5_omni.tiny import tiny_config
from model.loading import LoadError

REAL_INDEX = C.REFERENCE_3B_DIR / "model.safetensors.index.json"


def weight_names(directory) -> set[str]:
    names = set()
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            names |= set(f.keys())
    return names


def test_weight_names_equal_the_released_3b(tiny_dir):
    real = set(json.loads(REAL_INDEX.read_text())["weight_map"])
    tiny = weight_names(tiny_dir)
    assert sorted(real - tiny) == [] and sorted(tiny - real) == []


def test_depths_and_token_ids_are_the_released_ones(tiny_dir):
    real = json.loads((C.REFERENCE_3B_DIR / "config.json").read_text())
    tiny = json.loads((tiny_dir / "config.json").read_text())
    assert tiny.keys() == real.keys()
    for part in ("thinker_config", "talker_config"):
        for key, value in real[part].items():
            if key.endswith(("_id", "_index")) or key in ("position_id_per_seconds", "seconds_per_chunk", "vocab_size"):
                assert tiny[part][key] == value, (part, key)
    rt, tt = real["thinker_config"], tiny["thinker_config"]
    assert tt["text_config"]["num_hidden_layers"] == rt["text_config"]["num_hidden_layers"] == 36
    assert tt["text_config"]["vocab_size"] == rt["text_config"]["vocab_size"]
    assert tt["audio_config"]["encoder_layers"] == rt["audio_config"]["encoder_layers"]
    assert tt["audio_config"]["n_window"] == rt["audio_config"]["n_window"]
    assert tt["vision_config"]["depth"] == rt["vision_config"]["depth"]
    assert tt["vision_config"]["fullatt_block_indexes"] == rt["vision_config"]["fullatt_block_indexes"]
    assert tiny["talker_config"]["num_hidden_layers"] == real["talker_config"]["num_hidden_layers"]
    assert tiny["token2wav_config"]["dit_config"]["depth"] == real["token2wav_config"]["dit_config"]["depth"]


def test_tiny_model_keeps_real_structure_and_is_small(loaded):
    model = loaded.model
    cfg = model.config
    assert len(model.thinker.model.language_model.layers) == 36
    assert len(model.thinker.model.audio_tower.layers) == 32
    assert len(model.thinker.model.visual.blocks) == 32
    assert list(cfg.thinker_config.vision_config.fullatt_block_indexes) == [7, 15, 23, 31]
    dit = cfg.token2wav_config.dit_config
    assert (dit.num_hidden_layers, dit.block_size, list(dit.look_ahead_layers), list(dit.look_backward_layers)) == (
        22,
        24,
        [10],
        [0, 20],
    )
    n_params = sum(p.numel() for p in model.parameters())
    assert 15e6 < n_params < 40e6, n_params


def test_tokenizer_is_qwen2_bpe_with_the_omni_tokens(loaded):
    """The ids of the special tokens are pinned in test_processing; here, the BPE itself."""
    tok = loaded.processor.tokenizer
    assert tok("Hello world").input_ids == [9707, 1879]
    assert tok.decode([9707, 1879, C.IM_END_ID]) == "Hello world<|im_end|>"


def test_build_is_deterministic(tiny_dir, tmp_path):
    from model.families.qwen2_5_omni.tiny import build

    again = build(tmp_path / "again")
    a, b = load_file(tiny_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    voices_a = torch.load(tiny_dir / "spk_dict.pt", weights_only=True)
    voices_b = torch.load(again / "spk_dict.pt", weights_only=True)
    for name in C.VOICE_BOS_IDS:
        assert voices_a[name]["bos_token"] == voices_b[name]["bos_token"]
        assert torch.equal(voices_a[name]["cond"], voices_b[name]["cond"])
        assert torch.equal(voices_a[name]["ref_mel"], voices_b[name]["ref_mel"])


def test_voices_have_the_released_format(loaded):
    assert sorted(loaded.voices) == ["Chelsie", "Ethan"]
    for name, voice in loaded.voices.items():
        assert voice["bos_token"] == C.VOICE_BOS_IDS[name]
        assert tuple(voice["cond"].shape) == (1, C.SPEAKER_COND_DIM)
        assert tuple(voice["ref_mel"].shape) == (1, C.SPEAKER_REF_MEL_FRAMES, C.MEL_BINS_OUT)


@pytest.mark.parametrize(
    "config_path, expected",
    [(C.REFERENCE_3B_DIR / "config.json", 5_537_120_640), (C.REFERENCE_7B_CONFIG, 10_732_225_408)],
)
def test_released_configs_build_the_published_sizes(config_path, expected, tmp_path):
    from transformers import AutoConfig, Qwen2_5OmniForConditionalGeneration

    # Through AutoConfig.from_pretrained on a directory, as the loader's from_pretrained reads it.
    shutil.copyfile(config_path, tmp_path / "config.json")
    config = AutoConfig.from_pretrained(tmp_path)
    with torch.device("meta"):
        model = Qwen2_5OmniForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_a_wrong_weight_name_is_refused(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    tensors["thinker.model.norm.weight_renamed"] = tensors.pop("thinker.model.norm.weight")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadError, match="does not match|does not use"):
        load_model_weights(broken, torch.device("cpu"), torch.float32, "sdpa")


def test_tiny_talker_codes_stay_in_the_dit_range(loaded):
    """Greedy and sampled, transformers' own generate gives codes token2wav can embed, and a waveform."""
    model, tok = loaded.model, loaded.processor.tokenizer
    prompt = f"<|im_start|>system\n{C.AUDIO_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(prompt, return_tensors="pt").input_ids
    seen = []
    hook = model.token2wav.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(args[0] if args else kwargs["code"]), with_kwargs=True
    )
    try:
        for seed, greedy in [(0, True), (1, False), (2, False)]:
            torch.manual_seed(seed)
            _, wav = model.generate(
                input_ids=ids,
                speaker="Chelsie",
                thinker_max_new_tokens=24,
                thinker_do_sample=not greedy,
                talker_do_sample=not greedy,
                talker_top_k=0 if not greedy else 40,  # top-k off: the whole vocabulary is in play
            )
            assert wav.ndim == 1 and wav.numel() > 0
    finally:
        hook.remove()
    codes = torch.cat([c.flatten() for c in seen])
    assert codes.numel() > 0 and int(codes.max()) < C.DIT_NUM_EMBEDS


def test_tiny_config_matches_the_written_one(tiny_dir):
    assert json.loads((tiny_dir / "config.json").read_text()) == json.loads(json.dumps(tiny_config()))
