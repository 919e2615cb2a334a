"""A compact Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) with a KV cache.

Covers the shapes phones run: SmolLM and TinyLlama (Llama), Qwen2 (adds QKV bias). Module and
parameter names follow the Hugging Face layout (minus the leading ``model.``), so a local
safetensors checkpoint maps onto it without a renaming table. The engine knows nothing about
tokenization or time, only token ids.

    args = ModelArgs.from_name("smollm-135m")
    model = Transformer(args)                     # see weights.py for random / local weights
    model.setup_caches(max_batch_size=1, max_seq_len=512)
    logits = model(tokens, input_pos)             # tokens (B, T), input_pos (T,)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelArgs:
    name: str = "custom"
    n_layer: int = 2  # decoder blocks
    dim: int = 64  # hidden size
    n_head: int = 4  # query heads
    n_kv_head: int = 2  # key/value heads (grouped-query attention when < n_head)
    intermediate_size: int = 128  # SwiGLU hidden size
    vocab_size: int = 256
    rope_base: float = 10000.0  # RoPE theta
    norm_eps: float = 1e-5
    qkv_bias: bool = False  # Qwen2 puts a bias on q/k/v projections
    tie_embeddings: bool = True  # lm_head shares the input embedding matrix
    max_position: int = 2048  # longest context the model was built for

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return PRESETS[key]

    def num_params(self) -> int:
        """Parameter count (a tied lm_head is counted once)."""
        kv = self.n_kv_head * self.head_dim
        attn = self.dim * self.dim * 2 + self.dim * kv * 2  # q, o, k, v
        if self.qkv_bias:
            attn += self.dim + 2 * kv
        mlp = 3 * self.dim * self.intermediate_size
        block = attn + mlp + 2 * self.dim  # two RMSNorm weights
        embed = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return self.n_layer * block + embed + head + self.dim

    def weight_bytes(self, dtype: torch.dtype) -> int:
        return self.num_params() * _dtype_size(dtype)

    def kv_cache_bytes(self, max_seq_len: int, dtype: torch.dtype, batch: int = 1) -> int:
        """Bytes of a preallocated KV cache: K and V for every layer, kv head and position."""
        per_pos = 2 * self.n_layer * self.n_kv_head * self.head_dim * _dtype_size(dtype)
        return batch * max_seq_len * per_pos


PRESETS: dict[str, ModelArgs] = {
    "tiny": ModelArgs(name="tiny", n_layer=2, dim=64, n_head=4, n_kv_head=2, intermediate_size=128,
                      vocab_size=256, qkv_bias=True, max_position=512),
    "smollm-135m": ModelArgs(name="smollm-135m", n_layer=30, dim=576, n_head=9, n_kv_head=3,
                             intermediate_size=1536, vocab_size=49152, max_position=2048),
    "smollm-360m": ModelArgs(name="smollm-360m", n_layer=32, dim=960, n_head=15, n_kv_head=5,
                             intermediate_size=2560, vocab_size=49152, max_position=2048),
    "qwen2.5-0.5b": ModelArgs(name="qwen2.5-0.5b", n_layer=24, dim=896, n_head=14, n_kv_head=2,
                              intermediate_size=4864, vocab_size=151936, rope_base=1_000_000.0,
                              norm_eps=1e-6, qkv_bias=True, max_position=32768),
    "tinyllama-1.1b": ModelArgs(name="tinyllama-1.1b", n_layer=22, dim=2048, n_head=32, n_kv_head=4,
                                intermediate_size=5632, vocab_size=32000, tie_embeddings=False,
                                max_position=2048),
}

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def with_overrides(args: ModelArgs, **changes) -> ModelArgs:
    return replace(args, **changes)


class KVCache(nn.Module):
    def __init__(self, max_batch_size: int, max_seq_len: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype):
        super().__init__()
        shape = (max_batch_size, n_kv_head, max_seq_len, head_dim)  # (B, Hkv, S, D)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k_val: torch.Tensor, v_val: torch.Tensor):
        # input_pos: (T,), k_val/v_val: (B, Hkv, T, D)
        bsz = k_val.shape[0]
        self.k_cache[:bsz, :, input_pos] = k_val
        self.v_cache[:bsz, :, input_pos] = v_val
        end = int(input_pos[-1]) + 1
        return self.k_cache[:bsz, :, :end], self.v_cache[:bsz, :, :end]  # (B, Hkv, end, D)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 as the reference implementations do, then cast back.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(args: ModelArgs, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (S, D) in the Hugging Face "rotate half" layout."""
    hd = args.head_dim
    inv_freq = 1.0 / (args.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    t = torch.arange(seq_len, dtype=torch.float64)
    freqs = torch.outer(t, inv_freq)  # (S, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (S, D)
    return emb.cos().float(), emb.sin().float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D)
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        kv_dim = args.n_kv_head * args.head_dim
        self.q_proj = nn.Linear(args.dim, args.dim, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.dim, kv_dim, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.dim, kv_dim, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, input_pos, mask):
        bsz, seqlen, _ = x.shape  # (B, T, C)
        a = self.args
        q = self.q_proj(x).view(bsz, seqlen, a.n_head, a.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(bsz, seqlen, a.n_kv_head, a.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(bsz, seqlen, a.n_kv_head, a.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, Hkv, S, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           enable_gqa=a.n_kv_head != a.n_head)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(bsz, seqlen, a.dim)  # (B, T, C)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, input_pos, mask):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, input_pos, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.max_seq_len = 0
        self._cos = self._sin = None

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def setup_caches(self, max_batch_size: int, max_seq_len: int) -> None:
        """Preallocate a KV cache per layer; must precede cached forward calls."""
        if max_seq_len > self.args.max_position:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's "
                             f"{self.args.max_position} positions")
        self.max_seq_len = max_seq_len
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(max_batch_size, max_seq_len, self.args.n_kv_head,
                                               self.args.head_dim, self.dtype)
        cos, sin = rope_tables(self.args, max_seq_len)
        self._cos, self._sin = cos.to(self.dtype), sin.to(self.dtype)

    def kv_cache_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for layer in self.layers
                   if layer.self_attn.kv_cache is not None
                   for b in layer.self_attn.kv_cache.buffers())

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False):
        """idx (B, T) token ids at positions input_pos (T,) -> logits (B, T, V) or (B, 1, V)."""
        if self._cos is None:
            raise RuntimeError("call setup_caches() before forward()")
        seqlen = idx.shape[1]
        cos, sin = self._cos[input_pos], self._sin[input_pos]  # (T, D)
        end = int(input_pos[-1]) + 1
        mask = None
        if seqlen > 1:
            # Query t sees every cached position up to and including its own.
            mask = torch.arange(end)[None, :] <= input_pos[:, None]  # (T, end)
        x = self.embed_tokens(idx)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos, mask)
        x = self.norm(x)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x).float()  # (B, T, V)
