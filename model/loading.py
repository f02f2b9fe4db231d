"""Load an omni checkpoint (hub id or local directory) with its processor and voices.

One function, `load_omni`, serves the real Qwen2.5-Omni 7B and 3B, Qwen3-Omni and the tiny test checkpoints
alike, so the path the tests exercise is the path users run. The family comes from config.json's
`model_type`; Qwen3-Omni's own parts are in model/loading_qwen3.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model import constants as C
from model import loading_qwen3 as Q3
from model.engine.sampling import TALKER_DEFAULT, Sampling
from model.engine.token2wav_stream import VoiceCache

GIB = 1024**3
# Free GPU memory that `--model auto` asks for before choosing a size: the official minimum for a 15 s
# video (bf16, flash-attention 2: 7B 31 GB, 3B 18 GB) with the float32 vocoder and some headroom.
AUTO_MIN_FREE_GIB = {Q3.HUB_ID: Q3.MIN_FREE_GIB, C.HUB_7B: 34.0, C.HUB_3B: 20.0}
ZERO_GPU_SIZE_VARIABLE = "OMNI_DEMO_GPU_SIZE"  # "xlarge": `auto` on ZeroGPU takes Qwen3-Omni (the whole card)
TINY = "tiny"
TINY_QWEN3 = "tiny-qwen3-omni"
TINY_VERSION = "v2"  # bump when model/tiny.py changes what it writes, so cached copies are rebuilt
TINY_QWEN3_VERSION = "v2"  # likewise for model/tiny_qwen3_omni.py
QWEN25 = "qwen2_5_omni"


@dataclass(frozen=True)
class Family:
    """What the app shows and defaults to for a model family, chosen by config.json's `model_type`."""

    model_type: str
    name: str
    default_voice: str
    system_prompt: str
    prompt_is_fixed: bool  # speech only under `system_prompt` (Qwen2.5-Omni)
    talker: Sampling  # the talker's sampling in transformers' generate


FAMILIES = {
    QWEN25: Family(QWEN25, "Qwen2.5-Omni", "Chelsie", C.AUDIO_SYSTEM_PROMPT, True, TALKER_DEFAULT),
    Q3.MODEL_TYPE: Family(Q3.MODEL_TYPE, "Qwen3-Omni", Q3.DEFAULT_VOICE, Q3.SYSTEM_PROMPT, False, Q3.TALKER_SAMPLING),
}


class LoadError(RuntimeError):
    """A checkpoint could not be loaded; the message says what to do about it."""


@dataclass
class LoadedOmni:
    model: object  # Qwen2_5OmniForConditionalGeneration
    processor: object  # model.processing.OmniProcessor
    voices: dict[str, dict]  # Qwen2.5: spk_dict.pt, name -> {bos_token, cond, ref_mel}; Qwen3: name -> {speaker_id}
    source: str  # what the user asked for, resolved ("Qwen/Qwen2.5-Omni-7B", a directory, "tiny")
    checkpoint_dir: Path
    device: torch.device
    dtype: torch.dtype  # thinker and talker; token2wav is always float32
    attn_implementation: str
    is_tiny: bool = False
    notes: list[str] = field(default_factory=list)
    voice_cache: VoiceCache = field(default_factory=VoiceCache)  # every session's answers share it
    family: Family = FAMILIES[QWEN25]

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
    name = f"tiny-qwen3-omni-{TINY_QWEN3_VERSION}" if spec == TINY_QWEN3 else f"tiny-qwen2.5-omni-{TINY_VERSION}"
    return Path(root) / name


def ensure_tiny_checkpoint(directory: Path | None = None, spec: str = TINY) -> Path:
    """The tiny checkpoint's directory (`spec`: TINY for Qwen2.5-Omni, TINY_QWEN3), built on first use (seconds
    on a CPU)."""
    from model import tiny, tiny_qwen3_omni

    directory = Path(directory or tiny_cache_dir(spec))
    marker = directory / ".complete"
    if not marker.exists():
        staging = directory.with_name(directory.name + f".partial-{os.getpid()}")
        (tiny_qwen3_omni if spec == TINY_QWEN3 else tiny).build(staging)
        (staging / ".complete").write_text((TINY_QWEN3_VERSION if spec == TINY_QWEN3 else TINY_VERSION) + "\n")
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
        # Half a card (48 GB, the default) holds the 7B; Qwen3-Omni's 65.7 GiB need the whole one (96 GB, twice
        # the quota), which the Space asks for with the variable OMNI_DEMO_GPU_SIZE=xlarge.
        return Q3.HUB_ID if os.environ.get(ZERO_GPU_SIZE_VARIABLE) == "xlarge" else C.HUB_7B
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
    """The checkpoint's config.json, after checking that the directory holds a Qwen2.5-Omni checkpoint."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise LoadError(f"{directory} is not a Qwen2.5-Omni or Qwen3-Omni checkpoint: it has no config.json.")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise LoadError(f"{config_path} is not readable JSON: {error}") from error
    if config.get("model_type") not in (QWEN25, Q3.MODEL_TYPE):
        raise LoadError(
            f"{directory} is not a Qwen2.5-Omni or Qwen3-Omni checkpoint: its config.json has model_type "
            f"{config.get('model_type')!r}, not 'qwen2_5_omni' or 'qwen3_omni_moe'."
        )
    if not any(directory.glob("*.safetensors")):
        raise LoadError(f"{directory} has no *.safetensors weight files.")
    if config["model_type"] == Q3.MODEL_TYPE:
        if not Q3.voices(config):
            raise LoadError(f"{directory}: its config.json names no voices (talker_config.speaker_id).")
        return config
    if not (directory / "spk_dict.pt").is_file():
        raise LoadError(
            f"{directory} has no spk_dict.pt, the file that holds the voices. Copy it from the released checkpoint "
            f"(it sits beside config.json in {C.HUB_7B} and {C.HUB_3B})."
        )
    return config


def load_voices(path: Path) -> dict[str, dict]:
    try:
        voices = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise LoadError(f"{path} is not a readable voices file: {error}") from error
    for name, voice in voices.items() if isinstance(voices, dict) else [("?", None)]:
        if not (isinstance(voice, dict) and {"bos_token", "cond", "ref_mel"} <= voice.keys()):
            raise LoadError(f"{path}: voice {name!r} lacks bos_token, cond or ref_mel; is it a Qwen2.5-Omni spk_dict.pt?")
    if not voices:
        raise LoadError(f"{path} holds no voices.")
    return voices


def pick_attention(device: torch.device) -> str:
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


class ThinkerIdsInTheTalkerConfig(logging.Filter):
    """Drops transformers' warning that a talker config's token id lies outside the talker's vocabulary, for
    the seven ids the released config keeps there: they are the thinker's (its vision, audio and TTS text
    markers, all above 151000), which the talker's codec vocabulary (8448) never embeds; the engine reads
    them as thinker ids. Every other warning passes."""

    NAMES = ("tts_text_start_token_id", "tts_text_end_token_id", "tts_text_pad_token_id", "vision_start_token_id",
             "vision_end_token_id", "audio_start_token_id", "audio_end_token_id")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Model config: ")
            and "must be `None` or an integer within the vocabulary" in message
            and message.split()[2] in self.NAMES
        )


def quiet_known_config_warnings() -> None:
    config_logger = logging.getLogger("transformers.configuration_utils")
    if not any(isinstance(f, ThinkerIdsInTheTalkerConfig) for f in config_logger.filters):
        config_logger.addFilter(ThinkerIdsInTheTalkerConfig())


def load_model_weights(directory: Path, device: torch.device, dtype: torch.dtype, attn: str):
    """Qwen2_5OmniForConditionalGeneration from `directory`, refusing missing or unexpected weights."""
    from transformers import Qwen2_5OmniForConditionalGeneration as Omni

    quiet_known_config_warnings()
    # Omni.from_pretrained loads the speakers itself and breaks with output_loading_info (it calls
    # load_speakers on the returned tuple): use the generic loader and load the voices ourselves.
    model, info = super(Omni, Omni).from_pretrained(
        str(directory),
        dtype=dtype,
        attn_implementation=attn,
        device_map={"": device},
        output_loading_info=True,
    )
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        listed = "; ".join(f"{k}: {', '.join(map(str, v[:5]))}{' ...' if len(v) > 5 else ''}" for k, v in problems.items())
        raise LoadError(f"{directory} does not match the Qwen2.5-Omni architecture ({listed}).")
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith("inv_freq")]
    if unexpected:  # the released files carry the DiT's rotary inv_freq, a buffer transformers recomputes
        raise LoadError(f"{directory} has weights Qwen2.5-Omni does not use: {', '.join(sorted(unexpected)[:5])}")
    model.token2wav.float()  # the DiT and BigVGAN are only correct in float32
    return model.eval()


def load_omni(
    spec: str = "auto", device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> LoadedOmni:
    """Load model, processor and voices. `spec`: 'auto', 'tiny', a hub id, or a checkpoint directory.
    `dtype`: the thinker's and talker's (default bfloat16 on CUDA, float32 elsewhere); token2wav is float32."""
    from model import tiny
    from model.processing import OmniProcessor

    device = torch.device(device) if device else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError("--device cuda was asked for, but PyTorch sees no CUDA GPU here.")
    source = choose_model(spec, device)
    directory = ensure_tiny_checkpoint(spec=source) if source in (TINY, TINY_QWEN3) else resolve_checkpoint_dir(source)
    config = check_checkpoint_dir(directory)
    qwen3 = config["model_type"] == Q3.MODEL_TYPE
    is_tiny = (directory / tiny.MARKER_FILE).is_file()
    dtype = dtype or default_dtype(device)
    attn = pick_attention(device)
    try:
        if qwen3:
            model = Q3.load_model_weights(directory, device, dtype, attn, LoadError)
        else:
            model = load_model_weights(directory, device, dtype, attn)
    except torch.OutOfMemoryError as error:
        free = torch.cuda.mem_get_info(device)[0] / GIB if device.type == "cuda" else 0.0
        raise LoadError(
            f"Not enough GPU memory to load {source} ({free:.1f} GiB free after the attempt). Try "
            f"--model {C.HUB_3B}, close other GPU programs, or use --device cpu."
        ) from error
    if qwen3:
        voices, processor = Q3.voices(config), Q3.processor(directory)
    else:
        voices = load_voices(directory / "spk_dict.pt")
        model.speaker_map = voices  # transformers' generate(speaker=...) reads them here
        processor = OmniProcessor.from_pretrained(str(directory))
    loaded = LoadedOmni(model, processor, voices, source, directory, device, dtype, attn, is_tiny, family=FAMILIES[config["model_type"]])
    if is_tiny:
        loaded.notes.append(
            f"This is a tiny random-weight {loaded.family.name}, for trying the pipeline without a GPU "
            "(--model auto chooses it when there is none). Its text and speech are noise, not answers."
        )
    return loaded
