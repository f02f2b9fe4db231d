"""The loader: the policy that picks a checkpoint, and a clear message for every way loading fails."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from model import constants as C
from model.families.qwen3_omni.loading import HUB_ID as Q3_HUB
from model.loading import (
    GIB,
    LoadError,
    choose_model,
    load_omni,
    resolve_checkpoint_dir,
)


def test_loaded_tiny_model_dtypes_and_attention(loaded):
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    assert loaded.attn_implementation == "sdpa"
    assert next(loaded.model.thinker.parameters()).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in loaded.model.token2wav.parameters())
    assert loaded.voice_names == ["Chelsie", "Ethan"]
    assert loaded.model.speaker_map is loaded.voices


def test_auto_without_cuda_is_tiny():
    assert choose_model("auto", torch.device("cpu")) == "tiny"
    assert choose_model(C.HUB_3B, torch.device("cpu")) == C.HUB_3B


@pytest.mark.parametrize(
    "free_gib, expected",
    [(139, Q3_HUB), (76, Q3_HUB), (75.9, C.HUB_7B), (34, C.HUB_7B), (33.9, C.HUB_3B), (20, C.HUB_3B), (12, None)],
)
def test_auto_with_cuda_follows_free_memory(monkeypatch, free_gib, expected):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), 80 * GIB))
    if expected is None:
        with pytest.raises(LoadError, match="Not enough free GPU memory"):
            choose_model("auto", torch.device("cuda"))
    else:
        assert choose_model("auto", torch.device("cuda")) == expected


def test_hub_id_without_network_or_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(LoadError, match="no cached copy.*--model DIR"):
        resolve_checkpoint_dir("Qwen/Qwen2.5-Omni-7B")


def test_not_a_path_nor_a_hub_id():
    with pytest.raises(LoadError, match="neither a checkpoint directory"):
        resolve_checkpoint_dir("./no/such/dir")


def test_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(LoadError, match="has no config.json"):
        load_omni(str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LoadError, match="model_type 'llama'"):
        load_omni(str(tmp_path), device="cpu")


def test_missing_voices_file(tiny_dir, tmp_path):
    copy = tmp_path / "no-voices"
    shutil.copytree(tiny_dir, copy)
    (copy / "spk_dict.pt").unlink()
    with pytest.raises(LoadError, match="no spk_dict.pt"):
        load_omni(str(copy), device="cpu")


class NotAVoice:
    """Any pickled class: weights_only loading must refuse to run it."""


def test_voices_file_is_loaded_without_pickled_code(tiny_dir, tmp_path):
    copy = tmp_path / "bad-voices"
    shutil.copytree(tiny_dir, copy)
    torch.save({"Chelsie": NotAVoice()}, copy / "spk_dict.pt")
    with pytest.raises(LoadError, match="not a readable voices file"):
        load_omni(str(copy), device="cpu")


class RunsCode:
    """Unpickling this calls Path.touch on `marker`: what a malicious voices file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_voices_file_with_code_is_refused_without_running_it(tmp_path):
    from model.families.qwen2_5_omni.loading import load_voices

    marker = tmp_path / "code-ran"
    torch.save({"Chelsie": RunsCode(marker)}, tmp_path / "spk_dict.pt")
    with pytest.raises(LoadError, match="spk_dict.pt is not a readable voices file"):
        load_voices(tmp_path / "spk_dict.pt")
    assert not marker.exists()
    function, args = RunsCode(marker).__reduce__()  # what a plain unpickler would have called
    function(*args)
    assert marker.exists()


def test_cuda_asked_for_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(LoadError, match="sees no CUDA"):
        load_omni("tiny", device="cuda")


def test_a_load_prints_none_of_the_known_harmless_config_warnings(tiny_dir):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    code = f"from model.loading import load_omni; load_omni({str(tiny_dir)!r}, device='cpu')"
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRANSFORMERS_VERBOSITY": "warning"})
    assert result.returncode == 0, result.stderr
    assert "must be `None` or an integer within the vocabulary" not in result.stderr


def test_only_those_config_warnings_are_dropped():
    import logging

    from model.families.qwen2_5_omni.loading import ThinkerIdsInTheTalkerConfig

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.configuration_utils", logging.WARNING, "", 0, message, None, None)

    keep = ThinkerIdsInTheTalkerConfig().filter
    template = "Model config: {} must be `None` or an integer within the vocabulary (between 0 and 8447), got 151860."
    assert not keep(record(template.format("tts_text_start_token_id")))
    assert not keep(record(template.format("audio_end_token_id")))
    assert keep(record(template.format("pad_token_id")))  # any other id still warns
    assert keep(record("Some other warning about the config."))
