"""What both reference pipelines (model/families/*/reference.py) share: the processor's inputs for a
conversation, readied as the model takes them, and generate's output read back as a `ReferenceResult`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model import constants as C
from model.inputs.conversation import Conversation


@dataclass
class ReferenceResult:
    prompt_ids: list[int]
    thinker_tokens: list[int]  # generated, without the prompt
    text: str
    talker_codes: list[int] = field(default_factory=list)  # what token2wav was given (no EOS)
    waveform: np.ndarray | None = None  # float32 at 24 kHz
    seconds: float = 0.0  # wall time of generate()

    @property
    def audio_seconds(self) -> float:
        return 0.0 if self.waveform is None else len(self.waveform) / C.OUTPUT_SAMPLE_RATE


def prepare_inputs(processor, conversation: Conversation):
    """The processor's tensors for the whole conversation, ending with the assistant's generation prompt."""
    messages, media = conversation.model_inputs()
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(
        text=prompt,
        audio=media["audio"] or None,
        images=media["images"] or None,
        videos=[clip.frames for clip in media["videos"]] or None,
        video_fps=[clip.fps for clip in media["videos"]] or None,
        use_audio_in_video=conversation.use_audio_in_video(),
        return_tensors="pt",
    )


def media_inputs(loaded, inputs, audio_features: torch.Tensor | None = None) -> None:
    """The processor's `inputs`, in place, as the model takes them: `audio_features` (128, frames; e.g. the live
    path's per-window log-mel) instead of the one audio's, and the media tensors in the model's dtype."""
    if audio_features is not None:
        mask = inputs["feature_attention_mask"]
        if mask.shape[0] != 1 or int(mask.sum()) != audio_features.shape[-1]:
            raise ValueError("audio_features must replace exactly one audio's features, frame for frame")
        inputs["input_features"] = audio_features[None].to(loaded.device)
        inputs["feature_attention_mask"] = torch.ones((1, audio_features.shape[-1]), dtype=mask.dtype, device=mask.device)
    for key in ("input_features", "pixel_values", "pixel_values_videos"):
        if key in inputs:
            inputs[key] = inputs[key].to(loaded.dtype)


def answer_of(processor, inputs, output, text_only: bool, seconds: float) -> tuple[ReferenceResult, torch.Tensor | None]:
    """generate's output as a ReferenceResult (tokens after the prompt, their text, the waveform), and the
    waveform tensor (None for a text answer)."""
    sequences, waveform = (output, None) if text_only else output
    if hasattr(sequences, "sequences"):
        sequences = sequences.sequences
    tokens = sequences[0, inputs["input_ids"].shape[1] :].tolist()
    text = processor.tokenizer.decode(tokens, skip_special_tokens=True)
    result = ReferenceResult(inputs["input_ids"][0].tolist(), tokens, text, seconds=seconds)
    if waveform is not None:
        result.waveform = waveform.detach().float().cpu().numpy().reshape(-1)
    return result, waveform
