"""The engine against an independent implementation: tiny Llama and Qwen2 models built and saved
by Hugging Face ``transformers`` itself (a dev-only dependency), loaded by the engine from the
saved directory, must give the same logits (fp32 within 1e-4), for a full forward and for cached
decode, with tied and untied embeddings and every RoPE scaling the engine implements."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from agents.llm.kv_context import KVContext
from agents.llm.weights import load_model
from fleet.records import ModelSpec
from fleet.shapes import args_from_hf_config

SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=512,
)
CASES = {
    "llama-tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True)),
    "llama3-scaling-untied": (
        transformers.LlamaConfig,
        dict(
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "llama-linear-scaling": (
        transformers.LlamaConfig,
        dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    ),
    "qwen2-theta-1e6": (
        transformers.Qwen2Config,
        dict(tie_word_embeddings=False, rope_parameters={"rope_theta": 1e6}),
    ),
}
TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    """(transformers model, engine model) with the same weights, via save_pretrained."""
    config_cls, extra = CASES[request.param]
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(config_cls(**SHAPE, **extra))
    reference = reference.to(torch.float32).eval()
    path = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(path)
    engine = load_model(ModelSpec(path=str(path), dtype="fp32")).model
    return reference, engine


def _tokens(n: int) -> list[int]:
    return torch.randint(
        0, SHAPE["vocab_size"], (n,), generator=torch.Generator().manual_seed(1)
    ).tolist()


@torch.inference_mode()
def test_full_forward_logits_match_transformers(pair):
    reference, engine = pair
    ids = _tokens(48)
    want = reference(torch.tensor([ids])).logits[0].float()
    got = engine([(KVContext(engine, len(ids)), ids)], all_logits=True)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < TOL


@torch.inference_mode()
def test_cached_decode_matches_the_full_forward_of_transformers(pair):
    reference, engine = pair
    ids = _tokens(48)
    want = reference(torch.tensor([ids])).logits[0].float()
    ctx = KVContext(engine, len(ids))
    got = [engine([(ctx, ids[:20])])[0]]  # prefill, then one token at a time from the cache
    got += [engine([(ctx, [tok])])[0] for tok in ids[20:]]
    assert (torch.stack(got) - want[19:]).abs().max().item() < TOL


def test_transformers_5_config_layouts_are_read_and_unknown_ones_refused(tmp_path):
    cfg = transformers.Qwen2Config(**SHAPE, rope_parameters={"rope_theta": 1e6}).to_dict()
    assert args_from_hf_config(cfg).rope_base == 1e6  # read from rope_parameters
    old = dict(cfg, rope_theta=5e5, rope_scaling=None)  # the transformers 4.x layout
    old.pop("rope_parameters")
    assert args_from_hf_config(old).rope_base == 5e5
    for rope, reason in (
        ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "'yarn' is not implemented"),
        ({"rope_type": "dynamic", "factor": 2.0}, "'dynamic' is not implemented"),
        ({"rope_type": "llama3", "factor": 8.0}, "needs high_freq_factor"),
        ({"rope_type": "linear", "factor": 2.0, "mystery": 1}, "field\\(s\\) mystery"),
    ):
        with pytest.raises(ValueError, match=reason):
            args_from_hf_config(dict(cfg, rope_parameters=rope))
    with pytest.raises(ValueError, match="field\\(s\\) partial_rotary_factor not implemented"):
        args_from_hf_config(dict(cfg, partial_rotary_factor=0.5))
    with pytest.raises(ValueError, match="mlp_bias=true"):
        args_from_hf_config(dict(cfg, mlp_bias=True))
    json.dumps(cfg)  # the dict is what save_pretrained writes
