"""Weight-only int8: every matrix of the model stored as int8 with one bf16 scale per output row
(symmetric, per channel, as llama.cpp's Q8_0 or torchao's int8 weight-only do), activations,
norms and the KV cache in bf16.

Decode on a phone or a laptop CPU is bound by reading the weights, so a byte per weight instead
of two reads half as much. The matrix products run in PyTorch's own int8 weight kernel
(``torch._weight_int8pack_mm``), which reads the int8 rows and scales them as it goes; where
that kernel cannot take a shape (an inner size that is not a multiple of 16: only toy shapes),
or for a prefill of many rows, where the kernel is slower than dequantizing the matrix once and
running one bf16 product (measured: 256 rows, 5x), the matrix is dequantized for the product.

    quantize_model(model)           # in place: a Transformer's matrices become int8 (on the
                                    # meta device too: the structure a saved int8 model loads into)
    ModelArgs.weight_bytes("int8")  # fleet.shapes: the same bytes, counted without torch
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from agents.llm import native
from agents.llm.bf16_products import linear_in_fp32, upcast
from fleet.shapes import INT8_QUANT_METHOD

if TYPE_CHECKING:
    from agents.llm.transformer import Transformer

COMPUTE_DTYPE = torch.bfloat16  # activations, norms, scales and the KV cache of an int8 model
KERNEL_K_MULTIPLE = 16  # the int8 kernel's inner size must be a multiple of this
KERNEL_MAX_ROWS = 24  # more rows (a prefill chunk): dequantize once, then one bf16 product
QUANT_METHOD = INT8_QUANT_METHOD  # config.json's quantization_config.quant_method


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> (int8 (N, K), bf16 scales (N,)): each row scaled so its largest |value|
    maps to 127."""
    wf = w.float()
    scales = (wf.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(wf / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales.to(COMPUTE_DTYPE)


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W int8 and one scale per output row."""

    weight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self.kernel = self.in_features % KERNEL_K_MULTIPLE == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        few = x.numel() <= KERNEL_MAX_ROWS * self.in_features
        kernels = native.ops() if few and self.scales.dtype == COMPUTE_DTYPE else None
        if kernels is not None:  # a decode step's rows, fp32 or bf16 (native.py)
            y = kernels.int8_rows(x.reshape(-1, self.in_features), self.weight, self.scales)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], self.out_features)
        x2 = x.reshape(-1, self.in_features).to(COMPUTE_DTYPE).contiguous()
        if self.kernel and x2.shape[0] <= KERNEL_MAX_ROWS:
            y = torch._weight_int8pack_mm(x2, self.weight, self.scales)
        elif upcast(x2):  # a CPU without bf16 hardware: dequantized to fp32 (bf16_products.py)
            y = linear_in_fp32(x2, self.weight, None, self.scales)
        else:
            y = x2 @ (self.weight.to(COMPUTE_DTYPE) * self.scales[:, None]).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class Int8Embedding(nn.Module):
    """Rows of an int8 table, dequantized as they are looked up (shared with a tied head)."""

    weight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].to(COMPUTE_DTYPE) * self.scales[ids][..., None]


def _int8_linear(linear: nn.Linear) -> Int8Linear:
    q, s = quantize_rows(linear.weight.detach())
    bias = linear.bias.detach().to(COMPUTE_DTYPE) if linear.bias is not None else None
    return Int8Linear(q, s, bias)


@torch.no_grad()
def quantize_model(model: Transformer) -> Transformer:
    """Make every matrix of a Transformer int8 (in place) and the rest bf16; a tied lm_head
    shares the embedding's int8 table and scales."""
    m: Any = model
    tied = m.tied_head()  # before the cast: a cast copies each module's buffers apart
    m.to(COMPUTE_DTYPE)
    q, s = quantize_rows(m.embed_tokens.weight.detach())
    m.embed_tokens = Int8Embedding(q, s)
    m.lm_head = Int8Linear(q, s, None) if tied else _int8_linear(m.lm_head)
    for block in m.layers:
        for parent in (block.self_attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, _int8_linear(child))
    return model


def retie(model: Transformer) -> None:
    """A tied lm_head reads the embedding's own int8 table and scales (no copy)."""
    m: Any = model
    m.lm_head = Int8Linear(m.embed_tokens.weight, m.embed_tokens.scales, None)
