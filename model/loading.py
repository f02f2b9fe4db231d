"""Load an omni checkpoint (hub id or local directory) with its processor and voices.

One function, `load_omni`, serves the real Qwen2.5-Omni 7B and 3B, Qwen3-Omni and the tiny test checkpoints
alike, so the path the tests exercise is the path users run. The family comes from config.json's
`model_type` (the registry in model/families/); each family loads its own weights, voices and processor.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model import constants as C
from model.families import FAMILIES, QWEN2_5_OMNI, Family, LoadError, by_tiny_name
from model.families.qwen2_5_omni.token2wav import VoiceCache
from model.families.tiny_parts import MARKER_FILE

GIB = 1024**3
# Free GPU memory that `--model auto` asks for before choosing each released checkpoint, largest first.
AUTO_MIN_FREE_GIB = dict(
    sorted(((hub_id, gib) for family in FAMILIES.values() for hub_id, gib in family.released.items()), key=lambda item: -item[1])
)
# ZeroGPU's two sizes (spaces 0.51.3): half an RTX Pro 6000 (the default) or all of it.
ZERO_GPU_GIB = {"large": 48e9 / GIB, "xlarge": 96e9 / GIB}
ZERO_GPU_SIZE_VARIABLE = "OMNI_DEMO_GPU_SIZE"  # "xlarge": `auto` on ZeroGPU takes what the whole card holds
TINY = QWEN2_5_OMNI.tiny  # what `--model auto` runs without a GPU

__all__ = ["Family", "LoadError", "LoadedOmni", "load_omni"]


@dataclass
class LoadedOmni:
    model: object  # the family's transformers class (Qwen2_5OmniForConditionalGeneration, ...)
    processor: object  # the family's processor (model/families/<family>/processing.py)
    voices: dict[str, dict]  # Qwen2.5: spk_dict.pt, name -> {bos_token, cond, ref_mel}; Qwen3: name -> {speaker_id}
    source: str  # what the user asked for, resolved ("Qwen/Qwen2.5-Omni-7B", a directory, "tiny")
    checkpoint_dir: Path
    device: torch.device
    dtype: torch.dtype  # thinker and talker; token2wav is always float32
    attn_implementation: str
    is_tiny: bool = False
    notes: list[str] = field(default_factory=list)
    voice_cache: VoiceCache = field(default_factory=VoiceCache)  # every session's answers share it
    family: Family = QWEN2_5_OMNI

    @property
    def voice_names(self) -> list[str]:
        return sorted(self.voices)

    def describe(self) -> str:
        name = f"tiny random-weight {self.family.name} checkpoint" if self.is_tiny else self.source
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{name} on {self.device.type} ({dtype}, {self.attn_implementation} attention)"


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """The thinker's and talker's: bfloat16 on CUDA, float32 elsewhere (token2wav is always float32)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def tiny_cache_dir(spec: str = TINY) -> Path:
    root = os.environ.get("OMNI_DEMO_CACHE") or Path.home() / ".cache" / "omni-demo"
    family = by_tiny_name(spec) or QWEN2_5_OMNI
    return Path(root) / f"tiny-{family.tiny_family}-{family.tiny_version}"


def ensure_tiny_checkpoint(directory: Path | None = None, spec: str = TINY) -> Path:
    """The tiny checkpoint's directory (`spec`: a family's tiny name, "tiny" for Qwen2.5-Omni), built on first
    use (seconds on a CPU)."""
    family = by_tiny_name(spec) or QWEN2_5_OMNI
    directory = Path(directory or tiny_cache_dir(spec))
    marker = directory / ".complete"
    if not marker.exists():
        staging = directory.with_name(directory.name + f".partial-{os.getpid()}")
        family.build_tiny(staging)
        (staging / ".complete").write_text(family.tiny_version + "\n")
        if directory.exists():  # a stale or half-written copy
            import shutil

            shutil.rmtree(directory)
        staging.rename(directory)
    return directory


def choose_model(spec: str, device: torch.device) -> str:
    """Resolve `--model auto`: with CUDA the largest model the free GPU memory allows (Qwen3-Omni, then
    Qwen2.5-Omni 7B, then 3B), else the tiny one."""
    if spec != "auto":
        return spec
    if device.type != "cuda":
        return TINY
    if os.environ.get("SPACES_ZERO_GPU"):  # a GPU is attached per call: no memory to query, a size to ask for
        # Half a card (the default) holds the 7B; Qwen3-Omni's 65.7 GiB need the whole one (twice the quota),
        # which the Space asks for with the variable OMNI_DEMO_GPU_SIZE=xlarge.
        card = ZERO_GPU_GIB["xlarge" if os.environ.get(ZERO_GPU_SIZE_VARIABLE) == "xlarge" else "large"]
        return next(hub_id for hub_id, needed_gib in AUTO_MIN_FREE_GIB.items() if needed_gib <= card)
    free_bytes, _ = torch.cuda.mem_get_info(device)
    for hub_id, needed_gib in AUTO_MIN_FREE_GIB.items():
        if free_bytes >= needed_gib * GIB:
            return hub_id
    raise LoadError(
        f"Not enough free GPU memory for an omni model: {free_bytes / GIB:.1f} GiB free, Qwen2.5-Omni-3B needs about "
        f"{AUTO_MIN_FREE_GIB[C.HUB_3B]:.0f} GiB. Free the GPU, or run on the CPU with --device cpu."
    )


def resolve_checkpoint_dir(spec: str) -> Path:
    """A local checkpoint directory for a directory path or a hub id (downloaded or from the HF cache)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise LoadError(f"{spec!r} is neither a checkpoint directory nor a Hugging Face model id like {C.HUB_7B}.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(spec))
    except RepositoryNotFoundError as error:
        raise LoadError(f"{spec} is not a model on the Hugging Face hub (or it is private).") from error
    except Exception as error:  # offline, DNS, proxy...: fall back to what the cache holds
        try:
            return Path(snapshot_download(spec, local_files_only=True))
        except LocalEntryNotFoundError:
            raise LoadError(
                f"Cannot download {spec} (no network?) and there is no cached copy. On a machine with access run "
                f"`huggingface-cli download {spec} --local-dir DIR`, copy DIR here and start with --model DIR. "
                f"({type(error).__name__})"
            ) from error


def check_checkpoint_dir(directory: Path) -> dict:
    """The checkpoint's config.json, after checking that the directory holds a checkpoint of a known family."""
    names = " or ".join(family.name for family in FAMILIES.values())
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise LoadError(f"{directory} is not a {names} checkpoint: it has no config.json.")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise LoadError(f"{config_path} is not readable JSON: {error}") from error
    if config.get("model_type") not in FAMILIES:
        raise LoadError(
            f"{directory} is not a {names} checkpoint: its config.json has model_type "
            f"{config.get('model_type')!r}, not {' or '.join(map(repr, FAMILIES))}."
        )
    if not any(directory.glob("*.safetensors")):
        raise LoadError(f"{directory} has no *.safetensors weight files.")
    FAMILIES[config["model_type"]].check_checkpoint(directory, config)
    return config


def pick_attention(device: torch.device) -> str:
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_omni(
    spec: str = "auto", device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> LoadedOmni:
    """Load model, processor and voices. `spec`: 'auto', 'tiny', a hub id, or a checkpoint directory.
    `dtype`: the thinker's and talker's (default bfloat16 on CUDA, float32 elsewhere); token2wav is float32."""
    device = torch.device(device) if device else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError("--device cuda was asked for, but PyTorch sees no CUDA GPU here.")
    source = choose_model(spec, device)
    directory = ensure_tiny_checkpoint(spec=source) if by_tiny_name(source) else resolve_checkpoint_dir(source)
    config = check_checkpoint_dir(directory)
    family = FAMILIES[config["model_type"]]
    is_tiny = (directory / MARKER_FILE).is_file()
    dtype = dtype or default_dtype(device)
    attn = pick_attention(device)
    try:
        model = family.load_model(directory, device, dtype, attn)
    except torch.OutOfMemoryError as error:
        free = torch.cuda.mem_get_info(device)[0] / GIB if device.type == "cuda" else 0.0
        raise LoadError(
            f"Not enough GPU memory to load {source} ({free:.1f} GiB free after the attempt). Try "
            f"--model {C.HUB_3B}, close other GPU programs, or use --device cpu."
        ) from error
    voices, processor = family.load_voices(directory, config, model), family.load_processor(directory)
    loaded = LoadedOmni(model, processor, voices, source, directory, device, dtype, attn, is_tiny, family=family)
    if is_tiny:
        loaded.notes.append(
            f"This is a tiny random-weight {loaded.family.name}, for trying the pipeline without a GPU "
            "(--model auto chooses it when there is none). Its text and speech are noise, not answers."
        )
    return loaded
