"""transformers' own, non-streaming Qwen2.5-Omni generation: the correctness oracle and the baseline.

`reference_generate` runs `Qwen2_5OmniForConditionalGeneration.generate` exactly as users of transformers
do (thinker to the end, then the talker, then token2wav over the whole answer) and also returns what the
streaming engine must reproduce: the thinker's tokens, the talker's codes and the waveform for a fixed
token2wav noise.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from model import constants as C
from model.families.reference_parts import ReferenceResult, answer_of, media_inputs, prepare_inputs
from model.inputs.conversation import Conversation


@dataclass
class ThinkerSampling:
    """Thinker decoding; temperature 0 is greedy (the checkpoint's generation config)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"thinker_do_sample": False}
        return {
            "thinker_do_sample": True,
            "thinker_temperature": self.temperature,
            "thinker_top_p": self.top_p,
            "thinker_top_k": self.top_k,
            "thinker_repetition_penalty": self.repetition_penalty,
        }


@dataclass
class TalkerSampling:
    """Talker decoding with transformers' defaults; greedy keeps the repetition penalty, as transformers does."""

    greedy: bool = False
    temperature: float = C.TALKER_TEMPERATURE
    top_p: float = C.TALKER_TOP_P
    top_k: int = C.TALKER_TOP_K
    repetition_penalty: float = C.TALKER_REPETITION_PENALTY

    def generate_kwargs(self) -> dict:
        return {
            "talker_do_sample": not self.greedy,
            "talker_temperature": self.temperature,
            "talker_top_p": self.top_p,
            "talker_top_k": self.top_k,
            "talker_repetition_penalty": self.repetition_penalty,
        }


@contextmanager
def talker_sees_its_attention_mask(model):
    """transformers 5.23's generate drops the talker's all-ones attention mask before its forward, and the
    talker's forward keys two things on that mask: adding the codec PAD/BOS embeddings to the last two prompt
    positions, and its TMRoPE position ids. Without it the talker runs on plain positions and without those
    embeddings, which is not the model as released (and not what the official implementation does). Put the
    mask back, so the oracle runs transformers' own talker code as designed."""
    talker = model.talker
    original = talker.prepare_inputs_for_generation

    def prepare(input_ids, inputs_embeds=None, **kwargs):  # generate() inspects this signature
        inputs = original(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if inputs.get("attention_mask") is None:
            cache = inputs.get("past_key_values")
            past = cache.get_seq_length() if cache is not None else 0
            embeds = inputs.get("inputs_embeds")
            new = embeds.shape[1] if embeds is not None else inputs["input_ids"].shape[1]
            inputs["attention_mask"] = torch.ones((input_ids.shape[0], past + new), dtype=torch.long, device=input_ids.device)
        return inputs

    talker.prepare_inputs_for_generation = prepare
    try:
        yield
    finally:
        del talker.prepare_inputs_for_generation  # back to the class's method


@torch.no_grad()
def reference_generate(
    loaded,
    conversation: Conversation,
    *,
    voice: str = "Chelsie",
    text_only: bool = False,
    max_new_tokens: int = 256,
    talker_max_new_tokens: int = C.TALKER_MAX_NEW_TOKENS,
    thinker_min_new_tokens: int = 0,
    talker_min_new_tokens: int = 0,
    thinker: ThinkerSampling | None = None,
    talker: TalkerSampling | None = None,
    seed: int | None = 0,
    noise_seed: int | None = None,
    prompt_ids: list[int] | None = None,
    audio_features: torch.Tensor | None = None,
) -> ReferenceResult:
    """One answer from transformers' generate. `noise_seed` fixes token2wav's starting noise: it is
    `torch.randn((1, 2 * len(codes), 80))` drawn on the model's device right after `torch.manual_seed`."""
    model, processor = loaded.model, loaded.processor
    if voice not in loaded.voices:
        raise ValueError(f"Unknown voice {voice!r}; this checkpoint has {', '.join(loaded.voice_names)}.")
    inputs = prepare_inputs(processor, conversation).to(loaded.device)
    if prompt_ids is not None:  # exact ids for a text-only conversation (e.g. a history kept as token ids)
        if set(inputs.keys()) != {"input_ids", "attention_mask"}:
            raise ValueError("prompt_ids replaces the prompt of text-only conversations only")
        ids = torch.tensor([prompt_ids], device=loaded.device)
        inputs["input_ids"], inputs["attention_mask"] = ids, torch.ones_like(ids)
    media_inputs(loaded, inputs, audio_features)
    kwargs = dict(inputs)
    kwargs.update((thinker or ThinkerSampling()).generate_kwargs())
    kwargs.update((talker or TalkerSampling()).generate_kwargs())
    # Forced answer lengths (benchmarks): generate suppresses each stream's EOS ids until then.
    if thinker_min_new_tokens:
        kwargs["thinker_min_new_tokens"] = thinker_min_new_tokens
    if talker_min_new_tokens:
        kwargs["talker_min_new_tokens"] = talker_min_new_tokens
    # transformers 5.23 forwards the pixel tensors to talker.generate, which refuses them ("model_kwargs are
    # not used"); the talker needs only the grids, for its rope ids.
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs:
            kwargs[f"talker_{key}"] = None

    codes: list[torch.Tensor] = []

    def capture_codes(module, args, call_kwargs):
        code = args[0] if args else call_kwargs["code"]  # generate() passes it positionally
        codes.append(code.detach().cpu())
        if noise_seed is not None:
            torch.manual_seed(noise_seed)

    hook = model.token2wav.register_forward_pre_hook(capture_codes, with_kwargs=True)
    if seed is not None:
        torch.manual_seed(seed)
    started = time.perf_counter()
    try:
        with talker_sees_its_attention_mask(model):
            output = model.generate(
                **kwargs,
                speaker=voice,
                use_audio_in_video=conversation.use_audio_in_video(),
                thinker_max_new_tokens=max_new_tokens,
                talker_max_new_tokens=talker_max_new_tokens,
                generation_mode="text" if text_only else "audio",
            )
    finally:
        hook.remove()
    seconds = time.perf_counter() - started

    result, waveform = answer_of(processor, inputs, output, text_only, seconds)
    if waveform is not None:
        result.talker_codes = codes[0].reshape(-1).tolist() if codes else []
    return result
