"""Rotary position embeddings (RoPE) in the Hugging Face "rotate half" layout.

``apply_rope`` is the elementwise form the module path runs; ``rope_matrices`` the same rotation
as a (D, D) matrix a position, which a decode step (decode_step.py) applies to the queries and the
keys of every layer in one small product each.
"""

from __future__ import annotations

import math

import torch

from fleet.shapes import ModelArgs


def rope_tables(args: ModelArgs, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (S, D) in the Hugging Face "rotate half" layout."""
    hd = args.head_dim
    inv_freq = scaled_inv_freq(
        args, 1.0 / (args.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    )
    t = torch.arange(seq_len, dtype=torch.float64)
    freqs = torch.outer(t, inv_freq)  # (S, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (S, D)
    return emb.cos().float(), emb.sin().float()


def scaled_inv_freq(args: ModelArgs, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE frequencies after the model's context scaling (``linear``: every frequency divided
    by the factor; ``llama3``: low frequencies divided, high kept, the band between blended)."""
    if args.rope_type == "linear":
        return inv_freq / args.rope_factor
    if args.rope_type != "llama3":
        return inv_freq
    old = args.rope_original_max_position
    low_wavelen = old / args.rope_low_freq_factor
    high_wavelen = old / args.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / args.rope_factor, inv_freq)
    smooth = (old / wavelen - args.rope_low_freq_factor) / (
        args.rope_high_freq_factor - args.rope_low_freq_factor
    )
    blended = (1 - smooth) * out / args.rope_factor + smooth * out
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, out)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D)
    return x * cos + rotate_half(x) * sin


def rope_signs(head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """(D, D) with x @ S == rotate_half(x): S[j + D/2, j] = -1 and S[j, j + D/2] = +1."""
    half = head_dim // 2
    s = torch.zeros(head_dim, head_dim, dtype=dtype)
    idx = torch.arange(half)
    s[idx + half, idx] = -1.0
    s[idx, idx + half] = 1.0
    return s


def rope_matrices(cos: torch.Tensor, sin: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """(S, D, D) rotations: x @ R[s] == x * cos[s] + rotate_half(x) * sin[s]."""
    return torch.diag_embed(cos) + signs * sin[:, None, :]
