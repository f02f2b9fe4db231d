"""The model families' contract (model/families/family.py): every registered family provides every part, under
the same file names, and the shared engine names none of them."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from model.engine.family import EngineParts, TalkerInputs, Vocoder
from model.engine.kv_cache import GrowingKV
from model.engine.talker_stream import TalkerStream
from model.families import FAMILIES, Family, missing_parts

MODEL = Path(__file__).resolve().parent.parent / "model"
# The file of each part, the same in every family's folder.
ROLE_FILES = {"__init__.py", "loading.py", "processing.py", "talker_inputs.py", "talker_stream.py", "vocoder.py", "tiny.py", "reference.py"}


def members(protocol: type) -> list[str]:
    own = [name for name in vars(protocol) if not name.startswith("_")]
    return sorted(set(own) | set(getattr(protocol, "__annotations__", {})))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_registered_family_provides_every_part(model_type):
    family = FAMILIES[model_type]
    assert isinstance(family, Family) and family.model_type == model_type
    assert missing_parts(type(family)) == []


def test_a_family_that_lacks_a_part_is_caught():
    class Incomplete(Family):
        model_type = "incomplete"
        name = "Incomplete"

        def load_model(self, directory, device, dtype, attn):
            return None

    lacking = missing_parts(Incomplete)
    assert {"released", "default_voice", "tiny", "engine_parts", "build_tiny", "reference_generate"} <= set(lacking)
    assert "load_model" not in lacking and "model_type" not in lacking
    with pytest.raises(TypeError):
        Incomplete()


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_folder_has_the_same_role_files(model_type):
    folder = Path(__import__(type(FAMILIES[model_type]).__module__, fromlist=["_"]).__file__).parent
    assert ROLE_FILES <= {path.name for path in folder.glob("*.py")}


def test_the_registry_names_each_family_once():
    for key in ("tiny", "tiny_family", "name"):
        values = [getattr(family, key) for family in FAMILIES.values()]
        assert len(set(values)) == len(values), key
    hub_ids = [hub_id for family in FAMILIES.values() for hub_id in family.released]
    assert len(set(hub_ids)) == len(hub_ids)


@pytest.mark.parametrize("which", ["loaded", "qwen3_loaded"])
def test_each_familys_engine_parts_fulfil_the_engines_contract(which, request):
    loaded = request.getfixturevalue(which)
    parts = loaded.family.engine_parts(loaded.model, loaded.processor)
    for name in members(EngineParts):
        assert hasattr(parts, name), name
    assert isinstance(parts.audio_group_samples, int)
    for name in members(TalkerInputs):
        assert callable(getattr(parts.inputs, name)), name
    talker = parts.talker(GrowingKV)
    assert isinstance(talker, TalkerStream)
    for name in ("project", "answer_inputs", "penalty_history"):  # what the shared base leaves to a family
        assert getattr(type(talker), name) is not getattr(TalkerStream, name), name
    assert talker.eos_codes
    from model.engine.events import AnswerSettings

    voice = loaded.family.default_voice
    vocoder = parts.vocoder(voice, loaded.voices[voice], AnswerSettings(voice=voice), loaded.voice_cache)
    for name in members(Vocoder):
        assert hasattr(vocoder, name), name
    assert isinstance(vocoder.device, torch.device)


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_the_engine_names_no_family():
    for path in (MODEL / "engine").glob("*.py"):
        assert "qwen" not in path.name.lower(), path
        assert not [m for m in _imports(path) if m.startswith("model.families")], path


def test_nothing_outside_the_families_branches_on_a_model_type():
    for path in MODEL.rglob("*.py"):
        if "families" in path.parts:
            continue
        text = path.read_text()
        for model_type in FAMILIES:
            assert f'"{model_type}"' not in text and f"'{model_type}'" not in text, path


def test_the_engines_shortest_live_window_is_the_processors_token_rule():
    from model.engine.live_input import MEL_HOP, MIN_WINDOW_SAMPLES
    from model.families.qwen2_5_omni.processing import audio_token_count

    assert MIN_WINDOW_SAMPLES == min(n for n in range(1, 1000) if audio_token_count(math.ceil(n / MEL_HOP)) > 0)
