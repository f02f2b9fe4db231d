"""transformers' own, non-streaming Qwen3-Omni generation: the oracle for Qwen3-Omni as model/families/qwen2_5_omni/reference.py is
for Qwen2.5-Omni. `Qwen3OmniMoeForConditionalGeneration.generate` runs the thinker to the end, then the talker
with its code predictor, then code2wav over the whole answer; this returns its tokens, every frame's 16
codes and the waveform.
"""

from __future__ import annotations

import time

import torch

from model.families.reference_parts import ReferenceResult, answer_of, media_inputs, prepare_inputs
from model.inputs.conversation import Conversation


@torch.no_grad()
def reference_generate_qwen3(
    loaded,
    conversation: Conversation,
    *,
    voice: str = "Ethan",
    text_only: bool = False,
    max_new_tokens: int = 16,
    talker_max_new_tokens: int = 32,
    seed: int | None = 0,
    audio_features: torch.Tensor | None = None,
    thinker_min_new_tokens: int = 0,
    talker_min_new_tokens: int = 0,
) -> ReferenceResult:
    """One greedy answer (thinker, talker and code predictor). Random weights never choose EOS, so both
    token counts are caps; transformers keeps one frame fewer than the talker's cap (the last code 0 never
    gets its residual codes). `talker_codes` holds the frames, each [code 0, 15 residual codes].
    `audio_features` (128, frames) replace the one audio's (e.g. the live path's per-window log-mel). The
    min_new_tokens suppress each stream's EOS until then (forced answer lengths, for benchmarks)."""
    model, processor = loaded.model, loaded.processor
    inputs = prepare_inputs(processor, conversation).to(loaded.device)
    media_inputs(loaded, inputs, audio_features)
    frames: list[torch.Tensor] = []
    decode = model.code2wav.chunked_decode

    def capture(codes, *args, **kwargs):
        frames.append(codes.detach().cpu())
        return decode(codes, *args, **kwargs)

    if seed is not None:
        torch.manual_seed(seed)
    # transformers 5.23's talker reads `audio_config` from its own config for a prompt with audio and pictures,
    # where only the thinker's config has it (AttributeError otherwise): lend it the thinker's.
    model.talker.config.audio_config = model.config.thinker_config.audio_config
    model.code2wav.chunked_decode = capture
    forced = {}
    if thinker_min_new_tokens:
        forced["thinker_min_new_tokens"] = thinker_min_new_tokens
    if talker_min_new_tokens:
        forced["talker_min_new_tokens"] = talker_min_new_tokens
    started = time.perf_counter()
    try:
        output = model.generate(
            **inputs,
            **forced,
            speaker=voice,
            thinker_max_new_tokens=max_new_tokens,
            thinker_do_sample=False,
            talker_max_new_tokens=talker_max_new_tokens,
            talker_do_sample=False,
            return_audio=not text_only,
            use_audio_in_video=conversation.use_audio_in_video(),
        )
    finally:
        del model.code2wav.chunked_decode  # back to the class's method
    seconds = time.perf_counter() - started
    result, waveform = answer_of(processor, inputs, output, text_only, seconds)
    if waveform is not None:
        result.talker_codes = frames[0][0].T.tolist() if frames else []
    return result
