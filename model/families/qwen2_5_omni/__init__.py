"""Qwen2.5-Omni (7B, 3B): its parts under the file names every family uses (model/families/family.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from model import constants as C
from model.engine.events import AnswerSettings
from model.families.family import Family
from model.families.qwen2_5_omni import loading
from model.families.qwen2_5_omni.reference import TalkerSampling, reference_generate
from model.families.qwen2_5_omni.talker_inputs import Qwen25TalkerInputs
from model.families.qwen2_5_omni.talker_stream import Qwen25TalkerStream
from model.families.qwen2_5_omni.token2wav import VoiceCache
from model.families.qwen2_5_omni.vocoder import StreamingToken2Wav


class Qwen25Parts:
    audio_group_samples = 0  # its audio encoder reads each 2 s live window alone

    def __init__(self, model, processor):
        self.model = model
        self.inputs = Qwen25TalkerInputs(model, (processor.audio_token_id, processor.image_token_id, processor.video_token_id))

    def talker(self, kv: Callable) -> Qwen25TalkerStream:
        return Qwen25TalkerStream(self.model.talker, kv(self.model.talker.config))

    def vocoder(self, name: str, voice: dict, settings: AnswerSettings, voice_cache: VoiceCache | None) -> StreamingToken2Wav:
        return StreamingToken2Wav(
            self.model.token2wav,
            voice,
            noise=settings.noise_seed,
            first_chunk_frames=settings.first_chunk_frames,
            chunk_frames=settings.chunk_frames,
            max_chunk_frames=settings.max_chunk_frames,
            solver=settings.solver,
            num_steps=settings.num_steps,
            voice_cache=(voice_cache, name) if voice_cache is not None else None,
        )


class Qwen25Omni(Family):
    model_type = loading.MODEL_TYPE
    name = "Qwen2.5-Omni"
    released = loading.MIN_FREE_GIB
    default_voice = loading.DEFAULT_VOICE
    system_prompt = loading.SYSTEM_PROMPT
    prompt_is_fixed = True
    talker = loading.TALKER_SAMPLING
    tiny = "tiny"
    tiny_family = "qwen2.5-omni"
    tiny_version = "v2"  # bump when tiny.py changes what it writes, so cached copies are rebuilt

    def check_checkpoint(self, directory: Path, config: dict) -> None:
        loading.check_voices_file(directory)

    def load_model(self, directory, device, dtype, attn):
        return loading.load_model_weights(directory, device, dtype, attn)

    def load_voices(self, directory: Path, config: dict, model) -> dict[str, dict]:
        voices = loading.load_voices(directory / "spk_dict.pt")
        model.speaker_map = voices  # transformers' generate(speaker=...) reads them here
        return voices

    def load_processor(self, directory: Path):
        return loading.processor(directory)

    def engine_parts(self, model, processor) -> Qwen25Parts:
        return Qwen25Parts(model, processor)

    def build_tiny(self, out_dir):
        from model.families.qwen2_5_omni import tiny

        return tiny.build(out_dir)

    def reference_generate(self, loaded, conversation, **options):
        return reference_generate(loaded, conversation, **options)

    def codes_per_second(self, model) -> float:
        return C.CODES_PER_SECOND

    def forced_reference(self, loaded, conversation, *, voice: str, tokens: int, codes: int, seed: int):
        return reference_generate(
            loaded,
            conversation,
            voice=voice,
            max_new_tokens=tokens,
            thinker_min_new_tokens=tokens,
            talker_max_new_tokens=codes,
            talker_min_new_tokens=codes,
            talker=TalkerSampling(greedy=True),
            seed=seed,
            noise_seed=seed,
        )

    def describe_vocoder(self, dtype: str) -> str:
        return "float32 token2wav"  # the DiT and BigVGAN run in float32 whatever the thinker's dtype


FAMILY = Qwen25Omni()
