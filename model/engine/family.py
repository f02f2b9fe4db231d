"""The engine's parts that differ between model families, chosen by the checkpoint's `model_type`: what the
talker reads (talker_inputs.py), the talker (talker_stream.py, talker_stream_qwen3.py) and the vocoder
(token2wav_stream.py, code2wav_stream.py). Everything else (prompts, caches, live input, the answer loop,
history) is shared."""

from __future__ import annotations

from collections.abc import Callable

from model.engine.code2wav_stream import StreamingCode2Wav
from model.engine.events import AnswerSettings
from model.engine.talker_inputs import Qwen3TalkerInputs, Qwen25TalkerInputs
from model.engine.talker_stream import TalkerStream
from model.engine.talker_stream_qwen3 import Qwen3TalkerStream
from model.engine.token2wav_stream import StreamingToken2Wav, VoiceCache


class Qwen25Parts:
    audio_group_samples = 0  # its audio encoder reads each 2 s live window alone

    def __init__(self, model, processor):
        self.model = model
        self.inputs = Qwen25TalkerInputs(model, (processor.audio_token_id, processor.image_token_id, processor.video_token_id))

    def talker(self, kv: Callable) -> TalkerStream:
        return TalkerStream(self.model.talker, kv(self.model.talker.config))

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


class Qwen3Parts:
    def __init__(self, model, processor):
        self.model = model
        # Its audio encoder attends within groups of `n_window_infer` mel frames (8 s): see live_input.py.
        self.audio_group_samples = model.config.thinker_config.audio_config.n_window_infer * processor.feature_extractor.hop_length
        self.inputs = Qwen3TalkerInputs(model, (processor.audio_token_id, processor.image_token_id, processor.video_token_id))

    def talker(self, kv: Callable) -> Qwen3TalkerStream:
        return Qwen3TalkerStream(self.model.talker, kv(self.model.talker.config.text_config), inputs=self.inputs)

    def vocoder(self, name: str, voice: dict, settings: AnswerSettings, voice_cache: VoiceCache | None) -> StreamingCode2Wav:
        return StreamingCode2Wav(self.model.code2wav)


FAMILY_PARTS = {"qwen2_5_omni": Qwen25Parts, "qwen3_omni_moe": Qwen3Parts}


def engine_parts(model, processor) -> Qwen25Parts | Qwen3Parts:
    return FAMILY_PARTS[model.config.model_type](model, processor)
