"""The native kernels (agents/llm/native.cpp): row products exact to fp32 rounding against a
float64 reference at every tile shape, decode attention and RMSNorm against PyTorch, the model's
results unchanged by them, and PyTorch's operators when they cannot be built."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from agents.llm import native
from agents.llm.generate import generate, prefill
from agents.llm.kv_context import KVContext
from agents.llm.quant import quantize_model, quantize_rows
from agents.llm.weights import random_model
from fleet.shapes import ModelArgs

kernels = native.ops()
needs_kernels = pytest.mark.skipif(kernels is None, reason=f"not built: {native.status()}")


def reference(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor | None = None):
    w64 = w.double() if scales is None else w.double() * scales.double()[:, None]
    return x.double() @ w64.t()


def assert_within_fp32_sums(got: torch.Tensor, x, w, scales=None) -> None:
    """|got - exact| within the worst-case rounding of K-term fp32 sums (K units of fp32's
    rounding times the sum of the terms' magnitudes): any summation order is allowed, any
    wrong term is not."""
    want = reference(x, w, scales)
    k = x.shape[1]
    bound = (k + 2) * 2**-24 * reference(x.abs(), w.abs(), None if scales is None else scales.abs())
    assert (got.double() - want).abs().le(bound).all(), (got.double() - want).abs().max()


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("k", [64, 100, 120, 576])  # 100, 120: tails after the vector loops
def test_products_equal_float64_at_every_tile_shape(threads, k):
    """1 to 17 rows (every tile: 4, 3, 2, 1 rows, and 4 with a rest of 1 to 3) against 2 to 37
    weight rows (groups of three or two, remainders, a block split between threads; groups
    that prefetch the group ahead and the last groups, which do not)."""
    gen = torch.Generator().manual_seed(k)
    for n in (2, 5, 37):
        w = torch.randn(n, k, generator=gen).bfloat16()
        wf = torch.randn(n, k, generator=gen)
        q, s = quantize_rows(torch.randn(n, k, generator=gen))
        for m in range(1, 18):
            x = torch.randn(m, k, generator=gen)
            for got, args in (
                (kernels.bf16_rows(x, w), (x, w)),
                (kernels.fp32_rows(x, wf), (x, wf)),
                (kernels.int8_rows(x, q, s), (x, q, s)),
            ):
                assert got.dtype == torch.float32 and got.shape == (m, n)
                assert_within_fp32_sums(got, *args)
            xb = x.bfloat16()  # bf16 rows give bf16 results: the fp32 sums, rounded once
            got = kernels.bf16_rows(xb, w)
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got, reference(xb, w).bfloat16(), rtol=2**-7, atol=1e-5)


@needs_kernels
def test_bad_arguments_are_refused_with_the_reason():
    w = torch.randn(4, 8).bfloat16()
    with pytest.raises(RuntimeError, match="columns"):
        kernels.bf16_rows(torch.randn(2, 9), w)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.bf16_rows(torch.randn(2, 4), w.t())
    with pytest.raises(RuntimeError, match="one contiguous bf16 value a row"):
        kernels.int8_rows(torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(3))


@needs_kernels
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_a_model_generates_the_same_tokens_with_and_without_them(monkeypatch, dtype):
    """The tiny preset's greedy tokens are the same whichever products run."""
    from agents.llm import quant, transformer

    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = random_model(ModelArgs.from_name("tiny"), torch_dtype, seed=3)
    if dtype == "int8":
        model = quantize_model(model)
    prompt = list(range(5, 30))
    with_kernels = generate(model, prompt, 12)
    monkeypatch.setattr(transformer.native, "ops", lambda: None)
    monkeypatch.setattr(quant.native, "ops", lambda: None)
    assert generate(model, prompt, 12) == with_kernels


@needs_kernels
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 20])  # 20: a tail after the last full vector
def test_decode_attention_writes_the_caches_and_equals_float64(cache_dtype, head_dim):
    """Three sequences at positions 0, 7 and 40 (capacity 48), two kv heads of three queries
    each: the new keys and values land in each cache at its position, rounded as a tensor copy
    rounds them, and the output is the softmax attention over positions 0..pos in float64."""
    gen = torch.Generator().manual_seed(head_dim)
    n_layer, layer, hkv, group, positions = 3, 1, 2, 3, [0, 7, 40]
    caches = [
        (torch.randn(n_layer, hkv, 48, head_dim, generator=gen).to(cache_dtype),
         torch.randn(n_layer, hkv, 48, head_dim, generator=gen).to(cache_dtype))
        for _ in positions
    ]  # fmt: skip
    q = torch.randn(3, hkv, group, head_dim, generator=gen)
    k = torch.randn(3, hkv, head_dim, generator=gen)
    v = torch.randn(3, hkv, head_dim, generator=gen)
    want_caches = [(kc.clone(), vc.clone()) for kc, vc in caches]
    for s, (kc, vc) in enumerate(want_caches):
        kc[layer, :, positions[s]], vc[layer, :, positions[s]] = k[s], v[s]
    out = kernels.decode_attention(
        q, k, v, [kc for kc, _ in caches], [vc for _, vc in caches], layer, positions
    )
    for s, pos in enumerate(positions):
        kc, vc = want_caches[s]
        assert torch.equal(caches[s][0], kc) and torch.equal(caches[s][1], vc)
        keys, values = kc[layer, :, : pos + 1].double(), vc[layer, :, : pos + 1].double()
        weights = torch.softmax(q[s].double() @ keys.mT, dim=-1)  # (Hkv, G, T)
        torch.testing.assert_close(out[s].double(), weights @ values, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="holding position 48 of layer 1"):
        kernels.decode_attention(q[:1], k[:1], v[:1], [caches[0][0]], [caches[0][1]], 1, [48])


@needs_kernels
@pytest.mark.parametrize("width", [576, 20])
def test_rms_norm_equals_pytorchs(width):
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(width))
    w = torch.rand(width) + 0.5
    for weight in (w, w.bfloat16()):
        want = torch.nn.functional.rms_norm(x, (width,), weight.float(), 1e-5)
        torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-5), want, rtol=1e-6, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_decode_step_with_them_equals_one_without(monkeypatch, dtype):
    """A batch step of four sequences (1 to 60 cached positions): the same logits and the same
    caches with the native kernels as with PyTorch's operators (bf16: PyTorch's path keeps
    bf16 activations, so the two are bf16 rounding apart)."""
    from agents.llm import decode_step

    model = random_model(ModelArgs.from_name("tiny"), dtype, seed=4)
    gen = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (1, 2, 33, 60)]

    def step():
        ctxs = [KVContext(model) for _ in seqs]
        with torch.inference_mode():
            for ctx, seq in zip(ctxs, seqs):
                if len(seq) > 1:
                    prefill(model, ctx, seq[:-1])
            logits = model([(ctx, seq[-1:]) for ctx, seq in zip(ctxs, seqs)])
        return logits, ctxs

    with_kernels, ctxs = step()
    monkeypatch.setattr(decode_step.native, "ops", lambda: None)
    without, plain = step()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(with_kernels, without, rtol=tol, atol=tol)
    for a, b in zip(ctxs, plain):
        n = a.length
        torch.testing.assert_close(a.k[:, :, :n], b.k[:, :, :n], rtol=tol, atol=tol)
        torch.testing.assert_close(a.v[:, :, :n], b.v[:, :, :n], rtol=tol, atol=tol)


@needs_kernels
@pytest.mark.parametrize("dtype,count", [("bf16", 17), ("int8", 25)])
def test_a_step_of_more_sequences_than_the_native_products_take(dtype, count):
    """A bf16 step of 17 sequences (the native products take 16 rows) and an int8 one of 25
    (24) run PyTorch's products over bf16 activations, each sequence's logits those of its
    own full forward."""
    model = random_model(ModelArgs.from_name("tiny"), torch.bfloat16, seed=5)
    if dtype == "int8":
        model = quantize_model(model)
    seqs = [[3 + i, 7 + i] for i in range(count)]
    with torch.inference_mode():
        ctxs = [KVContext(model) for _ in seqs]
        for ctx, seq in zip(ctxs, seqs):
            prefill(model, ctx, seq[:-1])
        step = model([(ctx, seq[-1:]) for ctx, seq in zip(ctxs, seqs)])
        for i, seq in enumerate(seqs):
            full = model([(KVContext(model), seq)])[0]
            torch.testing.assert_close(step[i], full, rtol=5e-2, atol=5e-2)


def test_every_checkout_builds_into_one_folder_and_a_stale_lock_goes(tmp_path, monkeypatch):
    """The build's name and folder depend on the source's bytes, not on where it lies (a
    phone's bundle, a clean clone), and a lock older than a build can take is removed."""
    copy = tmp_path / "elsewhere" / "native.cpp"
    copy.parent.mkdir()
    copy.write_bytes(native.SOURCE.read_bytes())
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    here = native._build_place(str(tmp_path / "builds"))
    monkeypatch.setattr(native, "SOURCE", copy)
    there = native._build_place(str(tmp_path / "builds"))
    assert here == there and there[2].read_bytes() == copy.read_bytes()
    lock = there[1] / "lock"
    lock.touch()
    os.utime(lock, (1, 1))
    native._build_place(str(tmp_path / "builds"))
    assert not lock.exists()
    copy.write_bytes(copy.read_bytes() + b"// changed")
    assert native._build_place(str(tmp_path / "builds"))[0] != here[0]


def probe(env: dict[str, str]) -> dict:
    """A fresh process's view: whether the kernels loaded, and why not."""
    code = (
        "import json, torch\n"
        "from agents.llm import native\n"
        "from agents.llm.generate import generate\n"
        "from agents.llm.weights import random_model\n"
        "from fleet.shapes import ModelArgs\n"
        "m = random_model(ModelArgs.from_name('tiny'), torch.bfloat16, seed=3)\n"
        "tokens = generate(m, list(range(5, 30)), 4)\n"
        "s = native.status()\n"
        "print(json.dumps({'loaded': s.loaded, 'reason': s.reason, 'tokens': tokens}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True,
        text=True, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.splitlines()[-1])


def test_without_a_compiler_the_model_runs_on_pytorchs_products(tmp_path):
    """A machine without a C++ compiler (an empty extension folder, a compiler that does not
    exist) loads no kernels, says why, and generates the same tokens; so does the switch."""
    broken = probe({"TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": str(tmp_path / "no-c++")})
    off = probe({"SLM_FLEET_NATIVE": "0"})
    assert not broken["loaded"] and broken["reason"]
    assert not off["loaded"] and off["reason"] == "SLM_FLEET_NATIVE=0"
    assert broken["tokens"] == off["tokens"]
    if kernels is not None:
        assert probe({})["tokens"] == off["tokens"]
