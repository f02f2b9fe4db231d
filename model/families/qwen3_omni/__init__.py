"""Qwen3-Omni (30B-A3B): its parts under the file names every family uses (model/families/family.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from model import constants as C
from model.engine.events import AnswerSettings
from model.families.family import Family, LoadError
from model.families.qwen3_omni import loading
from model.families.qwen3_omni.reference import reference_generate_qwen3
from model.families.qwen3_omni.talker_inputs import Qwen3TalkerInputs
from model.families.qwen3_omni.talker_stream import Qwen3TalkerStream
from model.families.qwen3_omni.vocoder import StreamingCode2Wav


class Qwen3Parts:
    def __init__(self, model, processor):
        self.model = model
        # Its audio encoder attends within groups of `n_window_infer` mel frames (8 s): see live_input.py.
        self.audio_group_samples = model.config.thinker_config.audio_config.n_window_infer * processor.feature_extractor.hop_length
        self.inputs = Qwen3TalkerInputs(model, (processor.audio_token_id, processor.image_token_id, processor.video_token_id))

    def talker(self, kv: Callable) -> Qwen3TalkerStream:
        return Qwen3TalkerStream(self.model.talker, kv(self.model.talker.config.text_config), inputs=self.inputs)

    def vocoder(self, name: str, voice: dict, settings: AnswerSettings, voice_cache) -> StreamingCode2Wav:
        return StreamingCode2Wav(self.model.code2wav)


class Qwen3Omni(Family):
    model_type = loading.MODEL_TYPE
    name = "Qwen3-Omni"
    released = {loading.HUB_ID: loading.MIN_FREE_GIB}
    default_voice = loading.DEFAULT_VOICE
    system_prompt = loading.SYSTEM_PROMPT
    prompt_is_fixed = False
    talker = loading.TALKER_SAMPLING
    tiny = "tiny-qwen3-omni"
    tiny_family = "qwen3-omni"
    tiny_version = "v2"  # bump when tiny.py changes what it writes, so cached copies are rebuilt

    def check_checkpoint(self, directory: Path, config: dict) -> None:
        if not loading.voices(config):
            raise LoadError(f"{directory}: its config.json names no voices (talker_config.speaker_id).")

    def load_model(self, directory, device, dtype, attn):
        return loading.load_model_weights(directory, device, dtype, attn, LoadError)

    def load_voices(self, directory: Path, config: dict, model) -> dict[str, dict]:
        return loading.voices(config)

    def load_processor(self, directory: Path):
        return loading.processor(directory)

    def engine_parts(self, model, processor) -> Qwen3Parts:
        return Qwen3Parts(model, processor)

    def build_tiny(self, out_dir):
        from model.families.qwen3_omni import tiny

        return tiny.build(out_dir)

    def reference_generate(self, loaded, conversation, **options):
        return reference_generate_qwen3(loaded, conversation, **options)

    def codes_per_second(self, model) -> float:
        return C.OUTPUT_SAMPLE_RATE / model.code2wav.total_upsample  # 80 ms frames of 16 codes

    def forced_reference(self, loaded, conversation, *, voice: str, tokens: int, codes: int, seed: int):
        return reference_generate_qwen3(  # greedy; no vocoder noise to fix
            loaded,
            conversation,
            voice=voice,
            max_new_tokens=tokens,
            thinker_min_new_tokens=tokens,
            talker_max_new_tokens=codes + 1,  # transformers keeps one frame fewer than its cap
            talker_min_new_tokens=codes,
            seed=seed,
        )

    def describe_vocoder(self, dtype: str) -> str:
        return f"{dtype} code2wav"


FAMILY = Qwen3Omni()
