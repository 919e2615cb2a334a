"""Generation as small pure functions over token ids: prefill, decode_one_token, sample, generate.

``generate`` calls ``on_token(token_id)`` the moment each token is sampled, so the caller (an app)
can stamp time on its side; the engine itself never reads a clock. Output length is fixed by the
caller (benchmark style: no early stop on EOS), so every request of a workload costs what it says.
Batched serving across sequences is the scheduler's business (agents/modelservice/); it calls the
model with several contexts at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agents.llm.kv_context import KVContext
from agents.llm.transformer import Transformer


def sample(
    logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 is greedy."""
    if temperature <= 0.0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def prefill(model: Transformer, ctx: KVContext, tokens: list[int]) -> torch.Tensor:
    """Append the prompt tokens to ``ctx``; returns the next-token logits (V,)."""
    return model([(ctx, tokens)])[0]


def decode_one_token(model: Transformer, ctx: KVContext, token: int) -> torch.Tensor:
    """One cached decode step; returns the next-token logits (V,)."""
    return model([(ctx, [token])])[0]


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    on_token: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    ctx: KVContext | None = None,
) -> list[int]:
    """Greedy or temperature sampling of exactly ``max_new_tokens`` tokens after ``prompt``.

    With ``ctx``, tokens it already holds as a prefix of ``prompt`` are not recomputed.
    ``should_stop`` is polled between decode steps; a stopped generation returns what it has.
    """
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    if len(prompt) + max_new_tokens > model.args.max_position:
        raise ValueError(
            f"prompt {len(prompt)} + output {max_new_tokens} tokens exceed the "
            f"model's {model.args.max_position} positions"
        )
    ctx = ctx if ctx is not None else KVContext(model, len(prompt) + max_new_tokens)
    keep = min(ctx.common_prefix(prompt), len(prompt) - 1)  # at least one token to run
    ctx.truncate(keep)
    logits = prefill(model, ctx, prompt[keep:])
    out: list[int] = []
    for i in range(max_new_tokens):
        tok = int(sample(logits[None], temperature, generator)[0])
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if i + 1 == max_new_tokens or (should_stop is not None and should_stop()):
            break
        logits = decode_one_token(model, ctx, tok)
    return out
