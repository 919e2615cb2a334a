"""A compact Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) with a KV cache.

Covers the shapes phones run: SmolLM and TinyLlama (Llama), Qwen2 (adds QKV bias). Module and
parameter names follow the Hugging Face layout (minus the leading ``model.``), so a local
safetensors checkpoint maps onto it without a renaming table. The engine knows nothing about
tokenization or time, only token ids.

Sequences keep their KV cache in a ``KVContext`` of their own (kv_context.py), so one forward pass
can serve sequences of different lengths, prefill chunks and decode steps together: every linear
layer runs once over all their new tokens, and attention runs per sequence over its own cache
(Orca's selective batching). One sequence is the special case of a batch of one. A step in
which every sequence adds exactly one token, most of generation, runs as one flat loop over
the same parameters (decode_step.py: the same results, fp32 to rounding).

    args = ModelArgs.from_name("smollm-135m")     # fleet.shapes: the shape, without torch
    model = Transformer(args)                     # see weights.py for random / local weights
    ctx_a, ctx_b = KVContext(model), KVContext(model)
    logits = model([(ctx_a, [1, 2, 3]), (ctx_b, [7])])   # (2, V): next-token logits per sequence
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agents.llm import decode_step, native
from agents.llm.bf16_products import linear_in_fp32, upcast
from agents.llm.blocked_head import (
    BlockedEmbedding,
    BlockedHead,
    head_block,
    over_blocks,
    to_blocks,
)
from agents.llm.kv_context import KVContext
from agents.llm.native import NATIVE_MAX_ROWS
from agents.llm.rope import apply_rope, rope_signs, rope_tables
from fleet.shapes import ModelArgs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 as the reference implementations do, then cast back: one fused
        # kernel (F.rms_norm) instead of five element-wise passes.
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        xf = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return self.weight * xf.to(x.dtype)


SPLIT_MAX_ROWS = 16  # fp32 products of up to this many rows split in two on 2+ threads


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and names). Up to ``NATIVE_MAX_ROWS`` rows (decode steps)
    over a bf16 or fp32 matrix stored as (out, in) rows run in the native kernels (native.py).
    Without them one bf16 row goes through ``torch.mv``, whose bf16 kernel reads the weight
    1.3-2.5x faster than the matrix product's on these CPUs.

    Without them, on two threads or more, a few fp32 rows (a decode step, a batch) multiply the two
    column halves of the (in, out) matrix as one batched product over a strided view (no
    copy): the batched kernel gives each half a thread, where this CPU's matrix product of
    one row runs a 576-wide matrix no faster on two threads than on one. Measured on an AMD
    EPYC VM over SmolLM-135M's 210 layer matrices, two threads: one row 22.5 ms against 29.0,
    eight rows 35.0 against 52.2; on one thread the halves are slower (32.3 against 28.4), so
    one thread keeps the plain product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.numel() <= NATIVE_MAX_ROWS * self.in_features and w.is_contiguous():
            kernels = native.ops()  # a decode step's rows over (out, in) rows (native.py)
            if kernels is not None and w.dtype in (torch.bfloat16, torch.float32):
                product = kernels.bf16_rows if w.dtype == torch.bfloat16 else kernels.fp32_rows
                y = product(x.reshape(-1, self.in_features), w)
                if self.bias is not None:
                    y = y + self.bias
                return y.reshape(*x.shape[:-1], self.out_features)
        if x.dtype == torch.bfloat16 and x.numel() == self.in_features:
            y = torch.mv(self.weight, x.reshape(-1))
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        if upcast(x):  # many bf16 rows on a CPU without bf16 hardware (bf16_products.py)
            return linear_in_fp32(x, self.weight, self.bias)
        if x.numel() <= SPLIT_MAX_ROWS * self.in_features and self._splits(x):
            return self._in_halves(x)
        return F.linear(x, self.weight, self.bias)

    def _splits(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (
            x.dtype == torch.float32
            and w.dtype == torch.float32
            and self.out_features % 2 == 0
            and w.t().is_contiguous()  # laid out (in, out): Transformer.lay_out_matrices
            and torch.get_num_threads() >= 2
        )

    def _in_halves(self, x: torch.Tensor) -> torch.Tensor:
        half = self.out_features // 2
        halves = self.weight.t().view(self.in_features, 2, half).permute(1, 0, 2)
        y = over_blocks(x, halves)
        return y if self.bias is None else y + self.bias


def column_major(w: torch.Tensor) -> torch.Tensor:
    """A copy of a 2-D matrix with its values stored (in, out): the same (out, in) view."""
    return w.t().contiguous().t()


def is_linear_matrix(name: str, tied: bool) -> bool:
    """Whether a parameter name (Hugging Face layout, no leading ``model.``) is a matrix that a
    ``Linear`` reads: every projection, the head, and a tied embedding (which is the head)."""
    return (
        name.endswith("_proj.weight")
        or name == "lm_head.weight"
        or (tied and name == "embed_tokens.weight")
    )


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int):
        super().__init__()
        self.args = args
        self.layer_idx = layer_idx
        kv_dim = args.n_kv_head * args.head_dim
        self.q_proj = Linear(args.dim, args.dim, bias=args.qkv_bias)
        self.k_proj = Linear(args.dim, kv_dim, bias=args.qkv_bias)
        self.v_proj = Linear(args.dim, kv_dim, bias=args.qkv_bias)
        self.o_proj = Linear(args.dim, args.dim, bias=False)

    def forward(self, x, cos, sin, batch: list[tuple[KVContext, int]]):
        """x (1, T, C): the new tokens of every sequence, concatenated; batch: (context, count)."""
        _, seqlen, _ = x.shape
        a = self.args
        q = self.q_proj(x).view(1, seqlen, a.n_head, a.head_dim).transpose(1, 2)  # (1, H, T, D)
        k = (
            self.k_proj(x).view(1, seqlen, a.n_kv_head, a.head_dim).transpose(1, 2)
        )  # (1, Hkv, T, D)
        v = self.v_proj(x).view(1, seqlen, a.n_kv_head, a.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        outs, off = [], 0
        for ctx, n in batch:
            start = ctx.length  # positions already cached for this sequence
            keys, values = ctx.write(
                self.layer_idx, start, k[0, :, off : off + n], v[0, :, off : off + n]
            )
            mask = None  # one new token sees the whole cache
            causal = n > 1 and start == 0  # a fresh prompt: the plain causal triangle
            if n > 1 and start > 0:  # query i (at position start + i) sees positions <= its own
                mask = torch.arange(start + n)[None, :] <= (start + torch.arange(n))[:, None]
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, :, off : off + n],
                    keys[None],
                    values[None],
                    attn_mask=mask,
                    is_causal=causal,
                    enable_gqa=a.n_kv_head != a.n_head,
                )
            )  # (1, H, n, D)
            off += n
        y = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]  # (1, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(1, seqlen, a.dim))  # (1, T, C)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args, layer_idx)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, batch):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, batch)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self._cos: torch.Tensor | None = None  # RoPE tables, grown on demand
        self._sin: torch.Tensor | None = None
        self._signs: torch.Tensor | None = None  # RoPE's rotate-half as a matrix (decode_step)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: activations, RoPE tables and the KV cache (bf16 for an int8
        model, whose matrices are int8: agents/llm/quant.py)."""
        return self.norm.weight.dtype

    @torch.no_grad()
    def lay_out_matrices(self, block: int = 0) -> Transformer:
        """For PyTorch's products, when the native kernels are not loaded (weights.py decides:
        the native products read the (out, in) rows as stored). Keep every fp32 matrix (in, out)
        in memory, column-major as its (out, in) parameter
        sees it: same shape, names and values, so ``F.linear`` runs as ``x @ W`` over a
        row-major W, which this CPU's fp32 GEMM does faster than ``x @ W^T`` (measured with
        SmolLM-135M's matrices: the same at one row, 1.4-2.3x faster at eight). The fp32 head
        (and a tied embedding, the same table) goes further: blocks of ``block`` vocabulary
        entries (blocked_head.py; by default ``head_block(vocab)``), whose batched product
        reads each block once for all rows. bf16 keeps rows (its decode row runs in
        ``torch.mv``, which wants them). A load from a checkpoint makes its private copies in
        the (in, out) layout already (``column_major``)."""
        head = self.lm_head
        if isinstance(head, Linear) and head.weight.dtype == torch.float32:
            blocks = to_blocks(head.weight.detach(), block or head_block(self.args.vocab_size))
            if self.tied_head():
                self.embed_tokens = BlockedEmbedding(blocks)  # type: ignore[assignment]
            self.lm_head = BlockedHead(blocks)  # type: ignore[assignment]
        for m in self.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, Linear) and w is not None and w.dtype == torch.float32:
                if w.dim() == 2 and w.is_contiguous():
                    w.data = column_major(w.data)
        return self

    def tied_head(self) -> bool:
        """Whether the head reads the embedding's own table (no copy)."""
        head, embed = self.lm_head, self.embed_tokens
        if isinstance(head, BlockedHead):
            return isinstance(embed, BlockedEmbedding) and head.blocks is embed.blocks
        return head.weight is embed.weight

    def weight_bytes(self) -> int:
        """Bytes of every weight, scale and bias, a shared (tied) tensor counted once."""
        tensors = {id(t): t for t in (*self.parameters(), *self.buffers())}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def rope_signs(self) -> torch.Tensor:
        """(D, D) in the compute dtype: x @ S == rotate_half(x) (rope.rope_signs)."""
        if self._signs is None or self._signs.dtype != self.dtype:
            self._signs = rope_signs(self.args.head_dim, self.dtype)
        return self._signs

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        needed = int(positions.max()) + 1
        if self._cos is None or self._cos.shape[0] < needed:
            size = min(
                self.args.max_position,
                max(needed, 2 * (0 if self._cos is None else self._cos.shape[0]), 256),
            )
            cos, sin = rope_tables(self.args, size)
            self._cos, self._sin = cos.to(self.dtype), sin.to(self.dtype)
        assert self._sin is not None
        return self._cos[positions], self._sin[positions]  # (T, D)

    def forward(
        self, batch: list[tuple[KVContext, list[int]]], all_logits: bool = False
    ) -> torch.Tensor:
        """Append each sequence's new tokens to its context and return next-token logits:
        (S, V) for S sequences, or (T, V) for every new token when ``all_logits``."""
        counts = [len(toks) for _, toks in batch]
        if not batch or min(counts) < 1:
            raise ValueError("every sequence in a batch needs at least one new token")
        for (ctx, _), n in zip(batch, counts):
            if ctx.length + n > self.args.max_position:
                raise ValueError(
                    f"context of {ctx.length + n} tokens exceeds the model's "
                    f"{self.args.max_position} positions"
                )
            ctx.reserve(ctx.length + n)
        if max(counts) == 1:  # a decode step: the same results in fewer operators
            return decode_step.decode_step(
                self, [ctx for ctx, _ in batch], [toks[0] for _, toks in batch]
            )
        ids = torch.tensor([t for _, toks in batch for t in toks], dtype=torch.long)
        positions = torch.cat(
            [torch.arange(ctx.length, ctx.length + n) for (ctx, _), n in zip(batch, counts)]
        )
        cos, sin = self._rope(positions)
        pairs = [(ctx, n) for (ctx, _), n in zip(batch, counts)]
        x = self.embed_tokens(ids)[None]  # (1, T, C)
        for layer in self.layers:
            x = layer(x, cos, sin, pairs)
        for ctx, toks in batch:
            ctx.append(toks)
        x = x[0]  # (T, C)
        if not all_logits:
            last = torch.tensor(counts).cumsum(0) - 1
            x = x[last]  # (S, C)
        return self.lm_head(self.norm(x)).float()
