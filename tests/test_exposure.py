"""What the app exposes: where it listens, no share link unless asked, and no code from files it loads.

The code checks read the repository's Python with the ast module, so they see calls as calls (a keyword
passed through **kwargs or a renamed import is caught; a comment or a string in a docstring is not).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app import parse_args

REPO = Path(__file__).resolve().parent.parent


def test_listens_on_loopback_without_a_share_link(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    args = parse_args([])
    assert args.host == "127.0.0.1" and args.share is False
    assert parse_args(["--host", "0.0.0.0", "--share"]).host == "0.0.0.0"  # only when told


def test_listens_on_all_interfaces_on_spaces_only(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/omni-demo")
    args = parse_args([])
    assert args.host == "0.0.0.0" and args.share is False


# ---------------------------------------------------------------- what the code may call


def python_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "__pycache__"}
    return [p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts)]


def _constant(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _dotted(node: ast.AST) -> str:
    """'torch.load' for torch.load, 'load' for a bare name; '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    return ""


def unsafe_loading(source: str, filename: str = "<string>") -> list[str]:
    """Every place in `source` that could run code from a file or the hub:
    - trust_remote_code set to anything but False, as a keyword or as a string (a dict key, setattr);
    - torch.load (however imported) without weights_only=True;
    - pickle / dill / joblib loading, numpy's allow_pickle=True."""
    tree = ast.parse(source, filename)
    torch_load_names, false_keys = {"torch.load"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            torch_load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
        if isinstance(node, ast.Import):
            torch_load_names |= {f"{a.asname}.load" for a in node.names if a.name == "torch" and a.asname}
        if isinstance(node, ast.Dict):  # {"trust_remote_code": False} is the one harmless spelling as a string
            false_keys |= {id(k) for k, v in zip(node.keys, node.values) if _constant(v, False)}
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and not _constant(node.value, False):
            found.append(f"{where} trust_remote_code")
        if isinstance(node, ast.Constant) and node.value == "trust_remote_code" and id(node) not in false_keys:
            found.append(f"{where} 'trust_remote_code' as a string")
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in torch_load_names and not _constant(keywords.get("weights_only"), True):
                found.append(f"{where} {name} without weights_only=True")
            round_trip = name == "pickle.loads" and node.args and isinstance(node.args[0], ast.Call) and (
                _dotted(node.args[0].func) == "pickle.dumps"
            )  # our own objects through pickle and back (what crosses into a ZeroGPU call): no outside data
            if name in {"pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load", "cloudpickle.load"}:
                if not round_trip:
                    found.append(f"{where} {name}")
            if _constant(keywords.get("allow_pickle"), True):
                found.append(f"{where} allow_pickle=True")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "AutoTokenizer.from_pretrained(x, trust_remote_code=True)",
        "f(x, trust_remote_code=flag)",
        "f(x, **{'trust_remote_code': True})",
        "setattr(config, 'trust_remote_code', True)",
        "import torch\ntorch.load(path)",
        "import torch\ntorch.load(path, weights_only=False)",
        "from torch import load as tl\ntl(path, map_location='cpu')",
        "import torch as T\nT.load(path)",
        "import pickle\npickle.loads(data)",
        "import pickle\npickle.loads(pickle.dumps(x) + data)",
        "import numpy as np\nnp.load(path, allow_pickle=True)",
    ],
)
def test_the_scan_finds_unsafe_loading(snippet):
    assert unsafe_loading(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(path, weights_only=True, map_location='cpu')",
        "f(x, trust_remote_code=False)",
        "kwargs = {'trust_remote_code': False}",
        "# torch.load(path) in a comment\nx = 1",
        "import pickle\npickle.loads(pickle.dumps(x))",
    ],
)
def test_the_scan_passes_safe_loading(snippet):
    assert unsafe_loading(snippet) == []


def test_no_remote_code_and_no_pickled_code_anywhere_in_the_repository():
    files = [p for p in python_files() if p != Path(__file__).resolve()]  # this file spells the patterns out
    assert REPO / "model" / "loading.py" in files and len(files) > 20  # the scan sees the code
    found = [hit for path in files for hit in unsafe_loading(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []
