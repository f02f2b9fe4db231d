"""Qwen3-Omni's code2wav, streamed: frames of 16 codes in, 24 kHz audio chunks out while the talker goes on.

code2wav is causal: a pre-transformer (sliding-window attention, 72 frames, 8 layers) and then causal
(transposed) convolutions, 1920 samples a frame; each call leaves out its last 555 samples, which only the
next frames settle. Re-decoding a chunk with some frames of left context, as transformers' `chunked_decode`
does (25), is not exact: through 8 layers of 72-frame windows every frame sees 568 frames back (on the tiny
checkpoint a 50-frame context still gives a different waveform). So the pre-transformer runs once over each
new chunk on a sliding-window KV cache, exactly as over the whole answer, and only the convolutions, whose
reach is a few frames, re-read `CONV_CONTEXT` frames of its output before the chunk. Each chunk then
continues the audio exactly where the last one stopped, 555 samples before its first frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache

# Frames of pre-transformer output the convolutions re-read before a chunk. Measured on the tiny checkpoint
# (same kernels and dilations as the released one), 150 frames fed one by one, against one whole call: 8
# frames differ (28 dB), 12, 16, 24 and all frames give the same 80 dB (the pre-transformer's cache sums in
# another order); 16 keeps a margin.
CONV_CONTEXT = 16


class StreamingCode2Wav:
    batches_windows = False  # each answer's windows are decoded on their own (batching them: not yet)

    def __init__(self, code2wav, first_chunk_frames: int = 4, chunk_frames: int = 12, max_chunk_frames: int = 48):
        """The first audio after `first_chunk_frames` frames (80 ms each); then chunks of `chunk_frames`,
        doubling up to `max_chunk_frames` (fewer calls per second of speech once playback has a lead)."""
        self.code2wav = code2wav
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.max_chunk_frames = max_chunk_frames
        self.upsample = int(code2wav.total_upsample)
        self.frames: list[list[int]] = []
        self.hidden: torch.Tensor | None = None  # the pre-transformer's output for frames [kept_from, decoded)
        self.kept_from = 0
        self.decoded = 0  # frames through the pre-transformer
        self.emitted = 0  # samples handed out
        self.cache = DynamicCache(config=code2wav.config)
        self._next = first_chunk_frames

    @property
    def device(self) -> torch.device:
        return self.code2wav.code_embedding.weight.device

    def feed(self, frames: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self.frames.extend(list(f) for f in frames)
        chunks = []
        while len(self.frames) - self.decoded >= self._next:
            chunks.append(self._decode(self.decoded + self._next))
            self._next = min(self._next * 2 if self.decoded > self.first_chunk_frames else self.chunk_frames, self.max_chunk_frames)
        return chunks

    def flush(self) -> list[np.ndarray]:
        """The rest, through the last sample a whole decode gives (each chunk ends where its call does)."""
        return [self._decode(len(self.frames))] if len(self.frames) > self.decoded else []

    @torch.no_grad()
    def _decode(self, end: int) -> np.ndarray:
        """Frames [decoded, end) through the pre-transformer's cache; the convolutions over them with their
        context; the samples from where the last chunk stopped to this call's end."""
        model, start = self.code2wav, self.decoded
        codes = torch.tensor(self.frames[start:end], device=self.device).T.unsqueeze(0)  # (1, 16, n)
        embeds = model.code_embedding(codes + model.code_offset).mean(1)
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)
        out = model.pre_transformer(inputs_embeds=embeds, position_ids=positions, past_key_values=self.cache, use_cache=True)
        new = out.last_hidden_state
        context = min(CONV_CONTEXT, start)
        hidden = new if self.hidden is None else torch.cat([self.hidden[:, start - context - self.kept_from :], new], dim=1)
        self.hidden, self.kept_from, self.decoded = hidden, start - context, end
        wav = self._convolve(hidden)
        chunk = wav[self.emitted - (start - context) * self.upsample :]
        self.emitted += len(chunk)
        return chunk.float().cpu().numpy()

    def _convolve(self, hidden: torch.Tensor) -> torch.Tensor:
        """code2wav's forward after its pre-transformer: upsampling blocks, then the decoder."""
        wav = hidden.permute(0, 2, 1)
        for blocks in self.code2wav.upsample:
            for block in blocks:
                wav = block(wav)
        for block in self.code2wav.decoder:
            wav = block(wav)
        return wav.clamp(min=-1, max=1)[0, 0]
