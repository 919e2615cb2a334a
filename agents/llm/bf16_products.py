"""bf16 matrix products of many rows on CPUs without bf16 hardware: run them in fp32.

A CPU with bf16 instructions (AVX-512 BF16 or AMX on x86, BF16 on Arm) multiplies bf16 matrices
in oneDNN, faster than fp32. Without them PyTorch's bf16 matrix product is a generic loop: on
an AMD EPYC VM (AVX2) a 256-token prefill of SmolLM-135M in bf16 ran at 46 tokens/s against
350 in fp32, Hugging Face's too. There a product of ``UPCAST_ROWS`` rows or more runs in fp32:
the activations and the weight, a block of rows at a time, are converted to fp32 (a bf16
value is exactly an fp32 one), multiplied, and the result rounded back to bf16. Measured there
on a (1536, 576) matrix, one thread: 256 rows 5.2 ms against 45.5 in bf16, 32 rows 0.9 against
5.7, 8 rows 0.5 against 1.4 (two threads: 3.4 against 22.8, 1.1 against 2.9, 0.8 against 0.7).
A weight's fp32 block lives only during its product, at most ``BLOCK_BYTES``, so the memory a
model holds does not change. A single row (a decode step) keeps ``torch.mv`` (transformer.py),
and an int8 matrix's dequantized blocks go the same way (quant.py).

    if upcast(x):
        y = linear_in_fp32(x, weight, bias)          # weight bf16, or int8 with its row scales
"""

from __future__ import annotations

import functools

import torch

UPCAST_ROWS = 8  # bf16 products of at least this many rows run in fp32 (without bf16 hardware)
BLOCK_BYTES = 16 << 20  # the most fp32 weight converted at once


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: assume it does
        return True


def upcast(x: torch.Tensor) -> bool:
    """Whether a bf16 product over the rows of ``x`` runs in fp32 instead."""
    return (
        x.dtype == torch.bfloat16 and x.numel() >= UPCAST_ROWS * x.shape[-1] and not native_bf16()
    )


def linear_in_fp32(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ (weight * scales[:, None]).T + bias`` in fp32, returned in ``x``'s dtype; the
    weight (out, in) is converted a block of rows at a time."""
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).float()
    step = max(1, BLOCK_BYTES // (4 * in_features))
    parts = []
    for start in range(0, out_features, step):
        block = weight[start : start + step].float()
        if scales is not None:
            block.mul_(scales[start : start + step, None].float())
        parts.append(rows @ block.t())
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)
