"""An fp32 vocabulary table (the head, and a tied embedding) stored in blocks of columns.

The head is the largest matrix of a small model (SmolLM-135M: 49,152 x 576, a fifth of its
weights). Stored (in, out) as the other fp32 matrices are (transformer.py), one row is fast but a
batch of rows is not: this CPU's fp32 GEMM over a 49,152-column matrix runs eight rows in the
time of six or seven single rows. Cut into blocks of ``block`` vocabulary entries, each (in, block)
and contiguous, the same product runs as one batched product over the blocks, each block read
once for every row while it is in cache. Measured on SmolLM-135M's head, blocks of 4,096
(medians, one process; AMD EPYC, 2 threads): eight rows 8.3-8.8 ms against 25.7-26.1, one row
2.9-3.1 against 3.7-4.6; on one thread eight rows 14.4-15.9 against 26.1-27.2, one row 4.1-5.0
against 3.5-4.4.

An embedding looks its rows up across the blocks (``blocks[id // block, :, id % block]``), so
a tied model keeps one table: the same bytes as before, counted once. The state dict shows
the table as the usual (vocab, dim) ``weight``, so saved files, names and values do not change.

    blocks = to_blocks(weight, head_block(vocab))       # (vocab / block, dim, block)
    model.embed_tokens, model.lm_head = BlockedEmbedding(blocks), BlockedHead(blocks)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

HEAD_BLOCK = 4096  # vocabulary entries a block
MIN_BLOCK = 1024  # smaller blocks are not measured: such a vocabulary stays one block


def head_block(vocab: int) -> int:
    """The block size for a vocabulary: the largest power of two up to HEAD_BLOCK (and at
    least MIN_BLOCK) that divides it, else the whole vocabulary as one block."""
    block = HEAD_BLOCK
    while block >= MIN_BLOCK:
        if vocab % block == 0:
            return block
        block //= 2
    return vocab


def to_blocks(weight: torch.Tensor, block: int) -> torch.Tensor:
    """A (vocab, dim) table, any strides, as (vocab / block, dim, block), contiguous."""
    vocab, dim = weight.shape
    if vocab % block:
        raise ValueError(f"a vocabulary of {vocab} does not split into blocks of {block}")
    return weight.t().reshape(dim, vocab // block, block).permute(1, 0, 2).contiguous()


def over_blocks(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """x (..., dim) times every (dim, block) block of ``blocks`` (any strides) as one batched
    product, the blocks' columns side by side: (..., blocks * block)."""
    n, dim, block = blocks.shape
    rows = x.reshape(-1, dim)
    y = torch.bmm(rows.expand(n, *rows.shape), blocks)  # (blocks, rows, block)
    return y.permute(1, 0, 2).reshape(*x.shape[:-1], n * block)


def from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """The (vocab, dim) table of ``blocks`` (a copy)."""
    n, dim, block = blocks.shape
    return blocks.permute(1, 0, 2).reshape(dim, n * block).t().contiguous()


class _BlockedTable(nn.Module):
    """Holds the blocks (a buffer shared by a tied pair, counted once) and shows them in the
    state dict as ``weight``, (vocab, dim)."""

    blocks: torch.Tensor

    def __init__(self, blocks: torch.Tensor):
        super().__init__()
        self.register_buffer("blocks", blocks, persistent=False)
        self.block = blocks.shape[2]
        self.vocab = blocks.shape[0] * self.block
        self.dim = blocks.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        """The (vocab, dim) table: a copy, for saving and quantizing, never for inference."""
        return from_blocks(self.blocks)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        value = state_dict[key]
        if tuple(value.shape) != (self.vocab, self.dim):
            errors.append(f"{key}: shape {tuple(value.shape)}, expected {(self.vocab, self.dim)}")
            return
        with torch.no_grad():
            self.blocks.copy_(to_blocks(value.to(self.blocks.dtype), self.block))


class BlockedHead(_BlockedTable):
    """y = x W^T over the blocks: (..., dim) -> (..., vocab)."""

    bias = None  # a head has none (read where any linear layer's bias is)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return over_blocks(x, self.blocks)


class BlockedEmbedding(_BlockedTable):
    """Rows of the table, looked up across the blocks: ids (...) -> (..., dim)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = self.blocks[flat // self.block, :, flat % self.block]  # (ids, dim)
        return rows.reshape(*ids.shape, self.dim)
