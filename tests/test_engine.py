"""The torch engine: cached decode, determinism, presets, dtypes and local weights."""

import json

import pytest
import torch

from agents.llm.generate import decode_one_token, generate, prefill, sample
from agents.llm.kv_context import KVContext
from agents.llm.transformer import Transformer
from agents.llm.weights import RANDOM_WEIGHTS, load_model, random_model, save_hf_directory
from fleet.records import ModelSpec
from fleet.shapes import PRESETS, ModelArgs


def tiny(dtype=torch.float32, seed=0, **overrides) -> Transformer:
    args = ModelArgs.from_name("tiny")
    if overrides:
        from dataclasses import replace

        args = replace(args, **overrides)
    return random_model(args, dtype, seed)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"qkv_bias": False, "tie_embeddings": False}, {"n_kv_head": 4}, {"n_kv_head": 1}],
)
def test_kv_cached_decode_equals_full_forward(overrides):
    model = tiny(**overrides)
    tokens = torch.randint(
        0, model.args.vocab_size, (24,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    with torch.inference_mode():
        full = model([(KVContext(model), tokens)], all_logits=True)  # (24, V), one pass
        ctx = KVContext(model)  # a fresh context: the cached path fills it itself
        cached = [prefill(model, ctx, tokens[:10])]
        for pos in range(10, 23):
            cached.append(decode_one_token(model, ctx, tokens[pos]))
    torch.testing.assert_close(torch.stack(cached), full[9:23], rtol=1e-4, atol=1e-4)
    assert ctx.length == 23


def test_chunked_prefill_matches_full_prefill():
    model = tiny()
    tokens = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.inference_mode():
        whole = prefill(model, KVContext(model), tokens)
        ctx = KVContext(model, capacity=8)  # small: the context has to grow on the way
        prefill(model, ctx, tokens[:25])
        chunked = prefill(model, ctx, tokens[25:])
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)


def test_batched_step_over_ragged_sequences_equals_each_alone():
    """Prefill chunks and decode steps of different lengths in one forward pass."""
    model = tiny(tie_embeddings=False)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 17, 1, 30)]
    with torch.inference_mode():
        alone = []
        for p in prompts:
            ctx = KVContext(model)
            prefill(model, ctx, p[:-1] if len(p) > 1 else p)
            alone.append(model([(ctx, p[-1:])])[0] if len(p) > 1 else None)
        ctxs = [KVContext(model) for _ in prompts]
        for ctx, p in zip(ctxs, prompts):
            if len(p) > 1:
                prefill(model, ctx, p[:-1])
        # one step: three decode steps and one full prefill, ragged
        batch = [(c, p[-1:]) if len(p) > 1 else (c, p) for c, p in zip(ctxs, prompts)]
        together = model(batch)
    for i, p in enumerate(prompts):
        expected = alone[i] if alone[i] is not None else prefill(model, KVContext(model), p)
        torch.testing.assert_close(together[i], expected, rtol=1e-4, atol=1e-4)
    assert [c.length for c in ctxs] == [len(p) for p in prompts]


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"]
)
def test_a_decode_step_of_many_sequences_equals_each_ones_full_forward(dtype, tol):
    """A step where every sequence adds one token runs the flat path (decode_step.py); each
    sequence's logits equal the module path's full forward over its whole sequence, from an
    empty context to one near the model's 512 positions, with and without grouped heads."""
    for overrides in ({"tie_embeddings": False}, {"n_kv_head": 1}):
        model = tiny(dtype, **overrides)
        gen = torch.Generator().manual_seed(5)
        seqs = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (1, 2, 33, 510)]
        with torch.inference_mode():
            ctxs = [KVContext(model) for _ in seqs]
            for ctx, seq in zip(ctxs, seqs):
                if len(seq) > 1:
                    prefill(model, ctx, seq[:-1])
            step = model([(ctx, seq[-1:]) for ctx, seq in zip(ctxs, seqs)])
            for i, seq in enumerate(seqs):  # one token more: the module path, even for one
                full = model([(KVContext(model), [*seq, 0])], all_logits=True)[len(seq) - 1]
                torch.testing.assert_close(step[i], full, rtol=tol, atol=tol)
        assert [c.length for c in ctxs] == [len(s) for s in seqs]


def test_rope_as_a_matrix_equals_rotate_half():
    from agents.llm.rope import apply_rope, rope_matrices, rope_signs, rope_tables

    args = ModelArgs.from_name("smollm-135m")
    cos, sin = rope_tables(args, 2048)
    positions = torch.tensor([0, 1, 700, 2047])
    x = torch.randn(4, 9, args.head_dim, generator=torch.Generator().manual_seed(6))
    want = apply_rope(x, cos[positions][:, None], sin[positions][:, None])
    rot = rope_matrices(cos[positions], sin[positions], rope_signs(args.head_dim, torch.float32))
    torch.testing.assert_close(x @ rot, want, rtol=1e-5, atol=1e-5)


def test_context_swap_and_recompute_restore_exact_greedy_tokens(tmp_path):
    model = tiny(tie_embeddings=False)
    prompt = list(range(3, 40))
    uninterrupted = generate(model, prompt, 24)
    for how in ("swap", "recompute"):
        ctx = KVContext(model)
        first = generate(model, prompt, 12, ctx=ctx)
        used = ctx.used_bytes()
        if how == "swap":
            assert ctx.swap_out(tmp_path / "ctx.pt") == used and not ctx.resident
            assert ctx.swap_in(tmp_path / "ctx.pt") == used
        else:
            assert ctx.drop() > 0 and not ctx.resident
            with torch.inference_mode():
                prefill(model, ctx, ctx.reset_for_recompute())
        # continue the same sequence: the context already holds prompt + first[:-1]
        rest = generate(model, prompt + first, 12, ctx=ctx)
        assert first + rest == uninterrupted, how


def test_same_seed_same_tokens_and_different_seed_differs():
    prompt = list(range(1, 17))
    # Untied: with tied random embeddings the argmax mostly echoes the last token for any seed.
    a = generate(tiny(seed=7, tie_embeddings=False), prompt, 20)
    b = generate(tiny(seed=7, tie_embeddings=False), prompt, 20)
    c = generate(tiny(seed=8, tie_embeddings=False), prompt, 20)
    assert a == b
    assert len(a) == 20 and all(0 <= t < 256 for t in a)
    assert a != c


def test_temperature_sampling_is_reproducible_with_a_seeded_generator():
    model = tiny()
    prompt = [5, 6, 7]
    runs = [
        generate(model, prompt, 30, temperature=1.0, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    greedy = generate(model, prompt, 30)
    assert runs[0] == runs[1]
    assert runs[0] != greedy  # 30 tokens at temperature 1 over 256 ids: not the argmax path


def test_sample_greedy_picks_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.0]])
    assert sample(logits).tolist() == [1, 0]


def test_on_token_fires_per_token_and_stop_ends_early():
    model = tiny()
    seen = []
    out = generate(model, [1, 2, 3], 10, on_token=seen.append, should_stop=lambda: len(seen) >= 4)
    assert seen == out and len(out) == 4


def test_generate_refuses_more_tokens_than_the_model_has_positions():
    model = tiny()
    with pytest.raises(ValueError, match="exceed the model's 512 positions"):
        generate(model, list(range(500)), 40)


def test_bf16_runs_and_halves_weight_bytes():
    m32, m16 = tiny(torch.float32), tiny(torch.bfloat16)
    out = generate(m16, [1, 2, 3, 4], 8)
    assert len(out) == 8
    b32, b16 = m32.weight_bytes(), m16.weight_bytes()  # fp32's head table is a buffer
    assert b16 * 2 == b32
    assert m16.args.weight_bytes("bf16") == b16


@pytest.mark.parametrize(
    "name,params_m",
    [
        ("smollm-135m", 134.5),
        ("smollm-360m", 361.8),
        ("qwen2.5-0.5b", 494.0),
        ("tinyllama-1.1b", 1100.0),
    ],
)
def test_presets_have_the_published_parameter_counts(name, params_m):
    args = ModelArgs.from_name(name)
    with torch.device("meta"):
        model = Transformer(args)
    counted = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert counted == args.num_params()
    assert abs(counted / 1e6 - params_m) / params_m < 0.01


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="smollm-135m"):
        ModelArgs.from_name("gpt-5")


def test_random_weights_are_labelled():
    loaded = load_model(ModelSpec(preset="tiny"))
    assert loaded.weights_label == RANDOM_WEIGHTS
    assert loaded.tokenizer is None


def test_local_hf_directory_round_trip_with_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    src = tiny(seed=11)
    save_hf_directory(src, tmp_path)
    vocab = {f"w{i}": i for i in range(256)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))

    loaded = load_model(ModelSpec(path=str(tmp_path)))
    assert loaded.weights_label == f"local weights: {tmp_path}"
    assert loaded.tokenizer.encode("w3 w9").ids == [3, 9]
    prompt = loaded.tokenizer.encode("w1 w2 w3 w4").ids
    assert generate(loaded.model, prompt, 12) == generate(src, prompt, 12)


def test_local_directory_with_wrong_weights_is_refused(tmp_path):
    save_hf_directory(tiny(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing"):
        load_model(ModelSpec(path=str(tmp_path)))


def test_memory_estimates_match_allocations():
    model = tiny()
    args = model.args
    ctx = KVContext(model, capacity=128)
    assert ctx.allocated_bytes() == args.kv_cache_bytes(128, "fp32")
    assert ctx.k.numel() * 4 * 2 == ctx.allocated_bytes()
    assert PRESETS["smollm-135m"].weight_bytes("fp32") / 2**20 == pytest.approx(513, abs=1)


def test_hf_directory_uses_hugging_face_parameter_names(tmp_path):
    """The names a real Qwen2/Llama checkpoint has, written out by hand, not by our saver."""
    from safetensors import safe_open

    save_hf_directory(tiny(), tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as st:
        keys = set(st.keys())
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(2):
        p = f"model.layers.{i}."
        expected |= {
            p + "input_layernorm.weight",
            p + "post_attention_layernorm.weight",
            p + "mlp.gate_proj.weight",
            p + "mlp.up_proj.weight",
            p + "mlp.down_proj.weight",
            p + "self_attn.o_proj.weight",
        }
        for proj in "qkv":
            expected |= {p + f"self_attn.{proj}_proj.weight", p + f"self_attn.{proj}_proj.bias"}
    assert keys == expected  # tied embeddings: no lm_head.weight, as in Qwen2.5-0.5B


def test_local_directory_with_an_unsupported_config_is_refused(tmp_path):
    save_hf_directory(tiny(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 8.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported model config: RoPE scaling 'yarn'"):
        load_model(ModelSpec(path=str(tmp_path)))


@pytest.mark.parametrize("tie", [True, False])
def test_a_blocked_head_gives_the_same_logits_names_and_bytes(tie):
    """The fp32 head (and a tied embedding) split into vocabulary blocks: the same tokens and
    logits (to rounding) as the table in one block, the same state dict, the same bytes, and
    a quantized copy still shares one int8 table."""
    from agents.llm.blocked_head import BlockedEmbedding, BlockedHead, head_block
    from agents.llm.quant import Int8Linear, quantize_model

    one = tiny(tie_embeddings=tie)  # 256 entries: one block, the plain (in, out) layout
    one.lay_out_matrices()  # as without the native kernels (with them, rows stay as stored)
    assert head_block(256) == 256 and head_block(49152) == 4096 and head_block(32000) == 32000
    assert one.lm_head.blocks.shape[0] == 1
    four = Transformer(one.args)
    four.load_state_dict(one.state_dict())
    four.lay_out_matrices(block=64)
    assert isinstance(four.lm_head, BlockedHead) and four.lm_head.blocks.shape == (4, 64, 64)
    assert isinstance(four.embed_tokens, BlockedEmbedding) == tie
    assert four.tied_head() == one.tied_head() == tie
    assert four.weight_bytes() == one.weight_bytes()
    ids = torch.tensor([0, 63, 64, 200, 255])
    assert torch.equal(four.embed_tokens(ids), one.embed_tokens(ids))
    for (k, a), (k2, b) in zip(one.state_dict().items(), four.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    prompt = [5, 9, 200, 31, 64, 7]
    assert generate(four, prompt, 12) == generate(one, prompt, 12)
    ctx1, ctx4 = KVContext(one), KVContext(four)
    torch.testing.assert_close(four([(ctx4, prompt)]), one([(ctx1, prompt)]))
    for model in (one, four):  # a batched decode step, each sequence alone in the other
        batch = [KVContext(model) for _ in range(3)]
        model([(c, prompt[: i + 2]) for i, c in enumerate(batch)])
        if model is one:
            alone = torch.cat([one([(c, [i + 1])]) for i, c in enumerate(batch)])
    torch.testing.assert_close(four([(c, [i + 1]) for i, c in enumerate(batch)]), alone)
    q = quantize_model(four)
    assert isinstance(q.lm_head, Int8Linear) and q.tied_head() == tie


def test_bf16_products_of_many_rows_in_fp32_equal_the_bf16_ones(monkeypatch):
    """Without bf16 hardware a bf16 product of many rows runs in fp32 a block of weight rows at
    a time (bf16_products.py): the same values as the fp32 product of the same bf16 numbers,
    rounded to bf16, for a bf16 matrix with a bias and an int8 one with row scales; a model's
    logits either way are bf16 rounding apart."""
    from agents.llm import bf16_products
    from agents.llm.quant import quantize_rows

    torch.manual_seed(0)
    x = torch.randn(9, 64).bfloat16()
    w, b = torch.randn(100, 64).bfloat16(), torch.randn(100).bfloat16()
    monkeypatch.setattr(bf16_products, "BLOCK_BYTES", 4 * 64 * 30)  # blocks of 30 rows
    want = (x.float() @ w.float().t() + b.float()).bfloat16()
    assert torch.equal(bf16_products.linear_in_fp32(x, w, b), want)
    q, s = quantize_rows(torch.randn(100, 64))
    want = (x.float() @ (q.float() * s.float()[:, None]).t()).bfloat16()
    assert torch.equal(bf16_products.linear_in_fp32(x, q, None, s), want)
    monkeypatch.setattr(bf16_products, "native_bf16", lambda: False)
    assert bf16_products.upcast(x) and not bf16_products.upcast(x[:7])
    assert not bf16_products.upcast(x.float())
    m16, prompt = tiny(torch.bfloat16), list(range(3, 40))
    upcast_logits = m16([(KVContext(m16), prompt)], all_logits=True)
    monkeypatch.setattr(bf16_products, "native_bf16", lambda: True)
    assert not bf16_products.upcast(x)
    bf16_logits = m16([(KVContext(m16), prompt)], all_logits=True)
    cosine = torch.nn.functional.cosine_similarity(upcast_logits, bf16_logits, dim=-1)
    assert cosine.min() > 0.999  # bf16 rounding apart


def test_few_fp32_rows_on_two_threads_multiply_the_matrix_in_halves():
    """On two threads a laid-out fp32 matrix's product of a few rows runs as one batched
    product over its two column halves: the same values as the plain product, bias too."""
    from agents.llm.transformer import SPLIT_MAX_ROWS, Linear

    torch.manual_seed(0)
    lin = Linear(64, 96, bias=True)
    with torch.no_grad():
        lin.weight.data = lin.weight.data.t().contiguous().t()  # (in, out), as laid out
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for rows in (1, 8, SPLIT_MAX_ROWS, SPLIT_MAX_ROWS + 1):
            x = torch.randn(rows, 64)
            assert lin._splits(x)
            want = x @ lin.weight.detach().t() + lin.bias.detach()
            torch.testing.assert_close(lin(x), want)
            torch.testing.assert_close(lin(x[None])[0], want)
        torch.set_num_threads(1)
        assert not lin._splits(torch.randn(1, 64))
    finally:
        torch.set_num_threads(before)
