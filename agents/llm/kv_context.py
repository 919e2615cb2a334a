"""A sequence's KV cache ("context"): grown on demand, copyable by prefix, swappable to storage.

A context keeps the token ids whose keys and values it holds, so it can always be rebuilt by
recomputing (prefill of those tokens) when its tensors were dropped, or restored from a file when
they were swapped out. The model writes into it layer by layer (``write``) and commits the new
tokens once the forward pass is done (``append``).

    ctx = KVContext(model)
    model([(ctx, prompt)])                       # prefill
    n = ctx.swap_out(path); ctx.swap_in(path)    # bytes moved; the tokens stay the same
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

MIN_CAPACITY = 64


class KVContext:
    def __init__(self, model, capacity: int = 0):
        a = model.args
        self.n_layer, self.n_kv_head, self.head_dim = a.n_layer, a.n_kv_head, a.head_dim
        self.dtype = model.dtype
        self.tokens: list[int] = []  # ids whose K/V are held, in position order
        self.k: torch.Tensor | None = None  # (L, Hkv, capacity, D)
        self.v: torch.Tensor | None = None
        self._alloc(max(capacity, MIN_CAPACITY))

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def resident(self) -> bool:
        """True while the K/V tensors are in memory (not swapped out or dropped)."""
        return self.k is not None

    @property
    def capacity(self) -> int:
        k = self.k  # once: a swap-out thread may drop it meanwhile
        return k.shape[2] if k is not None else 0

    def bytes_per_token(self) -> int:
        return 2 * self.n_layer * self.n_kv_head * self.head_dim * self.dtype.itemsize

    def used_bytes(self) -> int:
        return self.length * self.bytes_per_token()

    def allocated_bytes(self) -> int:
        return self.capacity * self.bytes_per_token()

    def _alloc(self, capacity: int) -> None:
        shape = (self.n_layer, self.n_kv_head, capacity, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype)
        self.v = torch.zeros(shape, dtype=self.dtype)

    def reserve(self, n: int) -> None:
        """Make room for n positions (doubling, so appends cost amortized O(1))."""
        if not self.resident:
            raise RuntimeError("context is not resident: swap it in or recompute it first")
        if n <= self.capacity:
            return
        old_k, old_v, used = self.k, self.v, self.length
        self._alloc(max(n, 2 * self.capacity))
        self.k[:, :, :used] = old_k[:, :, :used]
        self.v[:, :, :used] = old_v[:, :, :used]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k/v (Hkv, n, D) at positions start.. of a layer; returns that layer's K and V
        up to the last new position, (Hkv, start + n, D) each."""
        end = start + k.shape[1]
        self.k[layer, :, start:end] = k
        self.v[layer, :, start:end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]

    def append(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)

    def truncate(self, n: int) -> None:
        """Forget every position from n on (the tensors beyond it are simply overwritten later)."""
        del self.tokens[n:]

    def common_prefix(self, tokens: list[int]) -> int:
        """How many leading tokens of ``tokens`` this context already holds."""
        n = 0
        for a, b in zip(self.tokens, tokens):
            if a != b:
                break
            n += 1
        return n

    def copy_prefix_from(self, other: KVContext, n: int) -> None:
        """Start this (empty) context with the first n positions of another."""
        self.reserve(n)
        self.k[:, :, :n] = other.k[:, :, :n]
        self.v[:, :, :n] = other.v[:, :, :n]
        self.tokens = list(other.tokens[:n])

    # -- eviction --------------------------------------------------------------------------

    def drop(self) -> int:
        """Free the tensors, keep the tokens (to recompute later); returns bytes freed."""
        freed = self.allocated_bytes()
        self.k = self.v = None
        return freed

    def swap_out(self, path: Path) -> int:
        """Write the used K/V to ``path`` (fsync'd, as a phone's flash would be) and free them."""
        n = self.length
        data = {"k": self.k[:, :, :n].clone(), "v": self.v[:, :, :n].clone()}
        with open(path, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        written = self.used_bytes()
        self.drop()
        return written

    def swap_in(self, path: Path) -> int:
        """Read K/V back from ``path``; returns bytes read."""
        data = torch.load(path, weights_only=True)
        n = data["k"].shape[2]
        if n != self.length:
            raise RuntimeError(f"swap file holds {n} positions, context has {self.length}")
        self._alloc(max(n, MIN_CAPACITY))
        self.k[:, :, :n] = data["k"]
        self.v[:, :, :n] = data["v"]
        os.unlink(path)
        return self.used_bytes()

    def reset_for_recompute(self) -> list[int]:
        """Empty, resident context; returns the tokens to prefill to rebuild it."""
        tokens, self.tokens = self.tokens, []
        self._alloc(max(len(tokens), MIN_CAPACITY))
        return tokens
