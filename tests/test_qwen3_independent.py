"""An independent check of the tiny Qwen3-Omni: transformers alone (its model class, its tokenizer, its
Whisper feature extractor, a ChatML prompt written here by hand; none of the project's processing or
reference code) against the engine, on inputs no other test uses. First run by a separate reviewer session
(2026-12-02: 5 texts in 4 languages, a speech answer, a chirp; all equal), kept here so it runs in CI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
    _get_feat_extract_output_lengths,
)

from model.engine.sampling import Sampling
from model.families.qwen3_omni import loading as Q3
from model.inputs.conversation import Audio, Text
from model.session import AnswerDone, AnswerSettings, AudioChunk, OmniSession

TOKENS = 10


def chatml(user: str) -> str:
    return f"<|im_start|>system\n{Q3.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def oracle(qwen3_dir):
    model = transformers.Qwen3OmniMoeForConditionalGeneration.from_pretrained(str(qwen3_dir), dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(qwen3_dir))


def engine_answer(loaded, part, text_only: bool) -> tuple[OmniSession, AnswerDone, np.ndarray]:
    session = OmniSession(loaded)
    session.add_user_turn(part)
    settings = AnswerSettings(
        voice="Aiden", text_only=text_only, max_new_tokens=TOKENS, talker=Sampling(greedy=True, repetition_penalty=1.05)
    )
    events = list(session.respond(settings))
    chunks = [e.samples for e in events if isinstance(e, AudioChunk)]
    return session, events[-1], np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


@pytest.mark.parametrize("text", ["Wie spät ist es in Tokio, wenn es in Berlin 14:37 Uhr ist?", "请用三句话描述一下黄山的日出。🌄"])
def test_text_in_speech_out_is_transformers_alone(oracle, qwen3_loaded, text):
    model, tokenizer = oracle
    ids = tokenizer(chatml(text), return_tensors="pt").input_ids
    frames = []
    decode = model.code2wav.chunked_decode
    model.code2wav.chunked_decode = lambda codes, *a, **k: frames.append(codes) or decode(codes, *a, **k)
    try:
        with torch.no_grad():
            sequences, wave = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), thinker_max_new_tokens=TOKENS, thinker_do_sample=False,
                return_audio=True, speaker="Aiden", talker_do_sample=False, talker_max_new_tokens=40,
            )
    finally:
        del model.code2wav.chunked_decode
    session, done, ours = engine_answer(qwen3_loaded, Text(text), text_only=False)
    assert session.thinker.ids[: ids.shape[1]] == ids[0].tolist()
    assert done.tokens == sequences[0, ids.shape[1] :].tolist()
    assert done.codes == frames[0][0].T.tolist()
    theirs = wave.reshape(-1).float().numpy()
    assert len(ours) == len(theirs) and np.abs(ours - theirs).max() < 1e-2


def test_a_sound_is_heard_as_transformers_alone_hears_it(oracle, qwen3_loaded):
    model, tokenizer = oracle
    seconds = np.arange(int(3.7 * 16_000)) / 16_000
    chirp = 0.3 * np.sin(2 * np.pi * (200 * seconds + 2800 / 7.4 * seconds**2))
    samples = (chirp + 0.02 * np.random.default_rng(123).standard_normal(len(seconds))).astype(np.float32)
    features = transformers.WhisperFeatureExtractor.from_pretrained(str(model.name_or_path))(
        samples, sampling_rate=16_000, padding="longest", return_attention_mask=True, return_tensors="pt"
    )
    count = int(_get_feat_extract_output_lengths(features["attention_mask"].sum()))
    ids = tokenizer(chatml("<|audio_start|>" + "<|audio_pad|>" * count + "<|audio_end|>"), return_tensors="pt").input_ids
    with torch.no_grad():
        sequences = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), input_features=features["input_features"],
            feature_attention_mask=features["attention_mask"], thinker_max_new_tokens=TOKENS, thinker_do_sample=False,
            return_audio=False,
        )
    sequences = getattr(sequences, "sequences", sequences)
    session, done, _ = engine_answer(qwen3_loaded, Audio(samples), text_only=True)
    assert session.thinker.ids[: ids.shape[1]] == ids[0].tolist()
    assert done.tokens == sequences[0, ids.shape[1] :].tolist()
