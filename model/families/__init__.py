"""The model families, one folder each, registered by config.json's `model_type` (the one registry).

Each family fulfils the contract in family.py with the same parts under the same file names; the shared
engine (model/engine/) names none of them. How to add one: model/families/README.md.
"""

from __future__ import annotations

from model.families.family import Family, LoadError, missing_parts
from model.families.qwen2_5_omni import FAMILY as QWEN2_5_OMNI
from model.families.qwen3_omni import FAMILY as QWEN3_OMNI

FAMILIES: dict[str, Family] = {family.model_type: family for family in (QWEN2_5_OMNI, QWEN3_OMNI)}

__all__ = ["FAMILIES", "QWEN2_5_OMNI", "QWEN3_OMNI", "Family", "LoadError", "by_tiny_name", "missing_parts"]


def by_tiny_name(name: str) -> Family | None:
    """The family whose tiny checkpoint `--model name` names (None: not a tiny checkpoint's name)."""
    return next((family for family in FAMILIES.values() if name == family.tiny), None)
