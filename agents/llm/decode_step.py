"""A decode step (every sequence adds one token) as one flat loop over the layers.

``Transformer.forward`` serves any mix of prefill chunks and decode steps through its modules.
A step in which every sequence adds exactly one token, most of what generation runs, comes here
instead: the same parameters and the same results (fp32 to rounding) from fewer operators. A
decode token runs about a thousand small operators beside its matrix products, and on a CPU
each costs a few microseconds of Python and dispatch, so their count is what this trims:

- no ``nn.Module`` calls: each projection's own ``forward`` is called directly, so a bf16 or
  int8 matrix still runs its own product (the native kernels, native.py, for a few rows);
- activations in fp32 ("wide"): an fp32 model's, and a bf16 or int8 model's when the native
  kernels are loaded (their products take fp32 rows; the KV cache keeps the model's dtype);
- RoPE as one small product a layer for the queries and one for the keys: the "rotate half"
  rotation of a position is a (D, D) matrix (rope.py), built once a step for all layers, and
  the queries' takes the attention's scale too;
- attention in one native call a layer for every sequence (native.cpp: it writes the new keys
  and values into each sequence's cache and attends in fp32), and RMSNorm in one call;
- no transposes, masks or concatenations: one new query sees its whole cache, heads stay in
  (kv head, group, D) order.

Without the native kernels fp32 attention is two products and a softmax a sequence, written in
place (faster here than the fused kernel over one query row), and a bf16 or int8 model keeps
bf16 activations, the elementwise RoPE and PyTorch's fused attention kernel, which accumulates
in fp32 (its bf16 products do not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from agents.llm import native
from agents.llm.native import NATIVE_MAX_ROWS
from agents.llm.rope import apply_rope, rope_matrices

if TYPE_CHECKING:
    from agents.llm.kv_context import KVContext


@torch.no_grad()  # inference only: the in-place writes take no autograd graph
def decode_step(model: Any, contexts: list[KVContext], tokens: list[int]) -> torch.Tensor:
    """Append one token to each context (reserved by the caller) of a ``Transformer`` (whose
    module imports this one); returns (S, V) logits."""
    a = model.args
    n, n_head, n_kv, hd = len(contexts), a.n_head, a.n_kv_head, a.head_dim
    group = n_head // n_kv
    positions = [ctx.length for ctx in contexts]
    caches = []  # each context's (K, V): (L, Hkv, capacity, D)
    for ctx in contexts:
        assert ctx.k is not None and ctx.v is not None  # resident: reserved by the caller
        caches.append((ctx.k, ctx.v))
    cos, sin = model._rope(torch.tensor(positions))  # (S, D), in the model's dtype
    # fp32 activations: an fp32 model's, and a bf16 or int8 model's when the native products
    # take every row of the step (more rows run PyTorch's products over bf16 activations)
    wide = model.dtype == torch.float32 or (n <= NATIVE_MAX_ROWS and native.ops() is not None)
    if wide:  # the rotation as a matrix; the queries' also takes the attention's scale
        rot = rope_matrices(cos.float(), sin.float(), model.rope_signs().float())
        rot_q = rot * hd**-0.5
    else:  # bf16 products of these shapes are slow on CPUs: the elementwise form
        cos, sin = cos[:, None], sin[:, None]
    kernels = native.ops() if wide else None
    k_caches, v_caches = [kc for kc, _ in caches], [vc for _, vc in caches]
    x = model.embed_tokens.forward(torch.tensor(tokens, dtype=torch.long))  # (S, C)
    y = None  # fp32 without the native kernel: each sequence's attention output, in place
    if wide:
        x = x.float()
        if kernels is None:
            y = x.new_empty(n, n_kv, group, hd)
    for i, layer in enumerate(model.layers):
        att, mlp = layer.self_attn, layer.mlp
        h = norm(layer.input_layernorm, x)
        q = att.q_proj.forward(h).view(n, n_head, hd)
        k = att.k_proj.forward(h).view(n, n_kv, hd)
        if wide:
            q, k = torch.matmul(q, rot_q), torch.matmul(k, rot)
        else:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = att.v_proj.forward(h).view(n, n_kv, hd)
        if kernels is not None:  # every sequence in one call, fp32 math over its own cache
            q = q.view(n, n_kv, group, hd)
            att_out = kernels.decode_attention(q, k, v, k_caches, v_caches, i, positions)
        else:
            att_out = attend(q, k, v, caches, i, positions, y)
        x = x + att.o_proj.forward(att_out.view(n, n_head * hd))
        h = norm(layer.post_attention_layernorm, x)
        x = x + mlp.down_proj.forward(F.silu(mlp.gate_proj.forward(h)) * mlp.up_proj.forward(h))
    for ctx, tok in zip(contexts, tokens):
        ctx.append([tok])
    return model.lm_head.forward(norm(model.norm, x)).float()


def norm(rms: Any, x: torch.Tensor) -> torch.Tensor:
    """An ``RMSNorm`` of fp32 rows in fp32 (a bf16 weight widened): one native call, else
    PyTorch's fused kernel; other rows go through the module."""
    w = rms.weight
    if x.dtype != torch.float32:
        return rms.forward(x)
    kernels = native.ops()
    if kernels is not None:
        return kernels.rms_norm(x, w, rms.eps)
    return F.rms_norm(x, w.shape, w if w.dtype == torch.float32 else w.float(), rms.eps)


def attend(q, k, v, caches, layer: int, positions: list[int], y: torch.Tensor | None):
    """One layer's attention without the native kernel, a sequence at a time: fp32 as two
    products and a softmax written into ``y`` (S, Hkv, G, D); bf16 (``y`` None) in PyTorch's
    fused kernel."""
    n, n_head, hd = q.shape
    n_kv = k.shape[1]
    outs = []
    for s, (kc, vc) in enumerate(caches):
        end = positions[s] + 1
        kc[layer, :, end - 1] = k[s]  # in the cache's dtype
        vc[layer, :, end - 1] = v[s]
        keys, values = kc[layer, :, :end], vc[layer, :, :end]  # (Hkv, end, D)
        if y is not None:
            scores = torch.matmul(q[s].view(n_kv, n_head // n_kv, hd), keys.mT)
            torch.matmul(torch.softmax(scores, -1), values, out=y[s])
        else:
            outs.append(
                F.scaled_dot_product_attention(
                    q[s].view(1, n_head, 1, hd), keys[None], values[None],
                    enable_gqa=n_kv != n_head,
                )
            )  # fmt: skip
    return y if y is not None else outs[0] if n == 1 else torch.cat(outs)
