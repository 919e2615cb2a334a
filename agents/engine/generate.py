"""Generation as small pure functions over token ids: prefill, decode_one_token, sample, generate.

``generate`` calls ``on_token(token_id)`` the moment each token is sampled, so the caller (an app)
can stamp time on its side; the engine itself never reads a clock. Output length is fixed by the
caller (benchmark style: no early stop on EOS), so every request of a workload costs what it says.
"""

from __future__ import annotations

from typing import Callable

import torch

from agents.engine.model import Transformer


def sample(logits: torch.Tensor, temperature: float = 0.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 is greedy."""
    if temperature <= 0.0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def prefill(model: Transformer, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
    """Run the prompt (B, T) through the model from ``start_pos``; returns last logits (B, V)."""
    input_pos = torch.arange(start_pos, start_pos + tokens.shape[1])
    return model(tokens, input_pos, last_only=True)[:, -1]


def decode_one_token(model: Transformer, token: torch.Tensor, pos: int) -> torch.Tensor:
    """One cached decode step: token (B,) at position ``pos`` -> next logits (B, V)."""
    return model(token.view(-1, 1), torch.tensor([pos]))[:, -1]


@torch.inference_mode()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, *,
             temperature: float = 0.0, generator: torch.Generator | None = None,
             on_token: Callable[[int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> list[int]:
    """Greedy or temperature sampling of exactly ``max_new_tokens`` tokens after ``prompt``.

    ``should_stop`` is polled between decode steps; a stopped generation returns what it has.
    """
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    total = len(prompt) + max_new_tokens
    if total > model.max_seq_len:
        raise ValueError(f"prompt {len(prompt)} + output {max_new_tokens} tokens exceed the "
                         f"KV cache of {model.max_seq_len} positions")
    out: list[int] = []
    logits = prefill(model, torch.tensor([prompt], dtype=torch.long))
    pos = len(prompt)
    for i in range(max_new_tokens):
        tok = sample(logits, temperature, generator)
        tok_id = int(tok[0])
        out.append(tok_id)
        if on_token is not None:
            on_token(tok_id)
        if i + 1 == max_new_tokens or (should_stop is not None and should_stop()):
            break
        logits = decode_one_token(model, tok, pos)
        pos += 1
    return out
