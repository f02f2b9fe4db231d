"""The DiT's velocity over one token2wav window, with the work every pass shares done once.

An RK4 solve calls the DiT 36 times on the same window. Called as `sample()` calls it, each pass encodes the
voice's 400-frame reference mel with the ECAPA-TDNN, embeds the codes, builds the rotary table, and has each
of the 22 layers rebuild its (batch, heads, n, n) block mask, which sdpa then converts again: on the tiny
model that shared work was about 40% of a pass. Here the voice's encoding and what depends on the time
alone (its embedding and every layer's modulation: shift, scale and gate, by pass index, since every
window's solve walks the same time grid) are made once per voice for every answer (`PreparedVoice` in
model/families/qwen2_5_omni/vocoder.py), the codes, rotary table and masks once per window. Each pass then runs
only what depends on the noisy mel, with the very same module calls and operations in the same order, so
the result is `dit(...)`'s bit for bit (tests/test_token2wav_stream.py).
"""

from __future__ import annotations

import torch

MIN_GUIDANCE_SCALE = 1e-5  # below it transformers drops the unconditioned half of the batch


class VoiceCondition:
    """One voice as the DiT's input embedding reads it, encoded once: `guided` also holds the unconditioned
    half (zero speaker, zero reference mel) that classifier-free guidance batches with it."""

    def __init__(self, dit: torch.nn.Module, cond: torch.Tensor, ref_mel: torch.Tensor, guided: bool):
        self.guided = guided
        self.halves = 2 if guided else 1  # the batch every pass runs
        if guided:
            cond = torch.cat([cond, torch.zeros_like(cond)], dim=0)
            ref_mel = torch.cat([ref_mel, torch.zeros_like(ref_mel)], dim=0)
        self.speaker = cond  # (halves, 192)
        with torch.no_grad():
            self.reference = dit.input_embed.spk_encoder(ref_mel)  # (halves, enc_dim)


class TimeModulation:
    """What each pass of a solve reads from its time alone, computed once for every pass of the time grid
    (the times `pass_times` lists) and read by pass index: the time embedding's modulation of every layer's
    two norms (as each layer's `attn_norm` computes them), and of the final norm. Never changed once made,
    so answers on any thread may share it."""

    def __init__(self, dit: torch.nn.Module, halves: int, pass_times: list[torch.Tensor]):
        self.dit, self.halves = dit, halves
        self.passes = [self._compute(time) for time in pass_times]

    def at(self, index: int):
        """Pass `index`'s (per-layer modulation, final scale and shift)."""
        return self.passes[index]

    @torch.no_grad()
    def _compute(self, time: torch.Tensor):
        dit = self.dit
        embedding = dit.time_embed(time.repeat(self.halves))
        layers = []
        for layer in dit.transformer_blocks:
            norm = layer.attn_norm
            shift, scale, gate, shift_ff, scale_ff, gate_ff = torch.chunk(norm.linear(norm.silu(embedding)), 6, dim=1)
            layers.append(
                (1 + scale[:, None], shift[:, None], gate.unsqueeze(1), 1 + scale_ff[:, None], shift_ff[:, None], gate_ff.unsqueeze(1))
            )
        final = dit.norm_out
        scale, shift = torch.chunk(final.linear(final.silu(embedding)), 2, dim=1)
        return layers, ((1 + scale)[:, None, :], shift[:, None, :])


class DiTWindow:
    """The ODE's right-hand side on one window of `codes` (1, n_codes) for `voice`. Its calls are the passes of
    one solve, in order; `times` carries their time modulation from window to window.

    Several windows of the same length (the answers of several conversations) are solved as one batch:
    `codes` (rows, n_codes) with one voice per row. The batch holds every row's conditioned half, then every
    row's unconditioned half, so one row alone is exactly the single window's batch."""

    def __init__(
        self,
        dit: torch.nn.Module,
        codes: torch.Tensor,
        voice: VoiceCondition | list[VoiceCondition],
        guidance_scale: float,
        times: TimeModulation,
    ):
        voices = voice if isinstance(voice, list) else [voice]
        self.dit, self.guidance_scale, self.guided, self.times = dit, guidance_scale, voices[0].guided, times
        self.rows = len(voices)
        self.passes = 0
        frames = codes.shape[1] * dit.config.repeats
        halves = voices[0].halves * self.rows
        code_embed = dit.text_embed(codes, drop_code=False)
        if self.guided:
            code_embed = torch.cat([code_embed, dit.text_embed(codes, drop_code=True)], dim=0)
        if self.rows == 1:
            reference, speaker = voices[0].reference, voices[0].speaker
        else:  # conditioned halves first, as for one window
            order = [(half, v) for half in range(voices[0].halves) for v in voices]
            reference = torch.cat([v.reference[half : half + 1] for half, v in order])
            speaker = torch.cat([v.speaker[half : half + 1] for half, v in order])
        reference = reference.unsqueeze(1).repeat(1, frames, 1)
        speaker = speaker.unsqueeze(1).repeat(1, frames, 1)
        self.conditions = (reference, code_embed, speaker)  # what the input projection reads besides the mel
        positions = torch.arange(frames, device=codes.device)[None, :].repeat(halves, 1)
        probe = torch.empty(0, dtype=reference.dtype, device=codes.device)
        self.rotary = dit.rotary_embed(probe, positions)
        blocks = torch.arange(frames, device=codes.device) // dit.config.block_size
        block_diff = (blocks[None, :] - blocks[:, None]).expand(halves, dit.config.num_attention_heads, frames, frames)
        self.masks = {}  # one per (look back, look ahead) pair the layers use
        for layer in dit.transformer_blocks:
            key = (layer.look_backward_block, layer.look_ahead_block)
            if key not in self.masks:
                allowed = (block_diff >= -float(key[0])) & (block_diff <= float(key[1]))
                if dit.config._attn_implementation == "sdpa":
                    # What sdpa turns a boolean mask into, once instead of in every layer of every pass.
                    additive = torch.zeros(allowed.shape[-2:], dtype=reference.dtype, device=codes.device)
                    allowed = additive.masked_fill(~allowed[0, 0], float("-inf"))[None, None]
                self.masks[key] = allowed

    def __call__(self, time: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        dit = self.dit
        modulations, (final_scale, final_shift) = self.times.at(self.passes)  # made at this very time
        self.passes += 1
        if self.rows > 1:  # every row of a modulation is the same time's: repeated for each window
            modulations = [tuple(m.repeat(self.rows, *[1] * (m.dim() - 1)) for m in layer) for layer in modulations]
            final_scale, final_shift = (m.repeat(self.rows, 1, 1) for m in (final_scale, final_shift))
        reference, code_embed, speaker = self.conditions
        mel_in = torch.cat([mel, mel], dim=0) if self.guided else mel
        hidden = dit.input_embed.proj(torch.cat((mel_in, reference, code_embed, speaker), dim=-1))
        for layer, modulation in zip(dit.transformer_blocks, modulations):
            hidden = self._layer(layer, hidden, modulation)
        out = dit.proj_out(dit.norm_out.norm(hidden) * final_scale + final_shift)
        if not self.guided:
            return out
        guided, unguided = torch.chunk(out, 2, dim=0)
        return guided + (guided - unguided) * self.guidance_scale

    def _layer(self, layer, hidden: torch.Tensor, modulation: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One DiT decoder layer as its forward runs it, with the window's mask and the pass's modulation."""
        scale, shift, gate, scale_ff, shift_ff, gate_ff = modulation
        norm = layer.attn_norm.norm(hidden) * scale + shift
        mask = self.masks[(layer.look_backward_block, layer.look_ahead_block)]
        attended = layer.attn(hidden_states=norm, position_embeddings=self.rotary, attention_mask=mask)
        hidden = hidden + gate * attended
        norm = layer.ff_norm(hidden) * scale_ff + shift_ff
        return hidden + gate_ff * layer.ff(norm)
