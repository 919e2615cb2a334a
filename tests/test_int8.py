"""Weight-only int8: real sizes, the same tokens as fp32, every way of loading it."""

import copy

import pytest
import torch

from agents.llm.generate import decode_one_token, generate, prefill
from agents.llm.kv_context import KVContext
from agents.llm.quant import Int8Linear, quantize_model, quantize_rows
from agents.llm.weights import load_model, random_model, save_hf_directory
from agents.storage import PhoneStorage
from fleet.coordinator.config import parse_experiment
from fleet.records import ModelSpec
from fleet.shapes import PRESETS, ModelArgs
from fleet.storage_models import storage_model


def fp32_and_int8(preset: str, seed: int = 0):
    ref = random_model(ModelArgs.from_name(preset), torch.float32, seed)
    return ref, quantize_model(copy.deepcopy(ref))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("preset", ["tiny", "smollm-135m"])
def test_planned_bytes_are_the_allocated_ones_and_at_most_55_percent_of_bf16(preset):
    args = PRESETS[preset]
    model = load_model(ModelSpec(preset=preset, dtype="int8")).model
    assert model.weight_bytes() == args.weight_bytes("int8")
    assert args.weight_bytes("int8") <= 0.55 * args.weight_bytes("bf16")
    assert model.dtype == torch.bfloat16  # activations and KV cache
    assert KVContext(model).bytes_per_token() * 16 == args.kv_cache_bytes(16, "int8")
    assert args.kv_cache_bytes(16, "int8") == args.kv_cache_bytes(16, "bf16")


def test_greedy_tokens_equal_fp32_on_the_tiny_preset():
    ref, q = fp32_and_int8("tiny", seed=0)
    for seed in range(3):
        prompt = torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(seed))
        assert generate(q, prompt.tolist(), 16) == generate(ref, prompt.tolist(), 16)


def test_smollm_int8_logits_track_fp32():
    """On the 135M shape the logits stay within 0.999 cosine of fp32's; greedy tokens may part
    where two logits are within the rounding (bench/engine_speed.py prints the agreement)."""
    ref, q = fp32_and_int8("smollm-135m", seed=0)
    prompt = torch.randint(0, 49152, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        a = ref([(KVContext(ref), prompt)], all_logits=True)
        b = q([(KVContext(q), prompt)], all_logits=True).float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min() > 0.999, cos.min()
    rel = (b - a).norm() / a.norm()
    assert rel < 0.05, rel


def test_cached_decode_equals_full_forward_in_int8():
    _, q = fp32_and_int8("tiny", seed=3)
    tokens = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        full = q([(KVContext(q), tokens)], all_logits=True)
        ctx = KVContext(q)
        cached = [prefill(q, ctx, tokens[:8])]
        for pos in range(8, 19):
            cached.append(decode_one_token(q, ctx, tokens[pos]))
    torch.testing.assert_close(torch.stack(cached), full[7:19], rtol=2e-2, atol=2e-2)


def test_the_kernel_and_the_dequantized_fallback_agree_with_the_float_product():
    gen = torch.Generator().manual_seed(0)
    for n, k in ((48, 64), (7, 13)):  # 13: not a multiple of 16, so no kernel
        w = torch.randn(n, k, generator=gen)
        q, s = quantize_rows(w)
        layer = Int8Linear(q, s, None)
        assert layer.kernel == (k % 16 == 0)
        x = torch.randn(3, 5, k, generator=gen).bfloat16()  # the activations it computes in
        want = x.float() @ (q.float() * s.float()[:, None]).T
        # bf16 output: about 3 significant digits of the largest term
        torch.testing.assert_close(layer(x).float(), want, rtol=1e-2, atol=1e-2 * want.abs().max())


def test_int8_saved_on_a_phone_reads_back_as_stored(tmp_path):
    spec = ModelSpec(preset="tiny", dtype="int8", seed=5)
    storage = PhoneStorage(tmp_path / "phone", storage_model("none"))
    stored = load_model(spec, storage)
    fresh = load_model(spec)  # in memory: drawn in bf16, quantized
    assert stored.model.weight_bytes() == PRESETS["tiny"].weight_bytes("int8")
    # the file holds int8: about a byte per weight is read from flash, not two
    assert stored.read_bytes < 0.6 * PRESETS["tiny"].weight_bytes("bf16") + 16_384
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    assert generate(stored.model, prompt, 12) == generate(fresh.model, prompt, 12)


def test_real_weights_are_quantized_as_they_load(tmp_path):
    ref = random_model(ModelArgs.from_name("tiny"), torch.float32, 7)
    save_hf_directory(ref, tmp_path / "hf")
    loaded = load_model(ModelSpec(path=str(tmp_path / "hf"), dtype="int8")).model
    assert isinstance(loaded.lm_head, Int8Linear)
    assert loaded.weight_bytes() == PRESETS["tiny"].weight_bytes("int8")
    want = quantize_model(copy.deepcopy(ref))
    prompt = list(range(10, 30))
    assert generate(loaded, prompt, 16) == generate(want, prompt, 16)
    # an int8 directory is refused in a float dtype rather than read as garbage
    save_hf_directory(want, tmp_path / "q8")
    with pytest.raises(ValueError, match="load it with dtype int8"):
        load_model(ModelSpec(path=str(tmp_path / "q8"), dtype="bf16"))


def test_experiment_files_select_int8():
    exp = parse_experiment(
        {
            "name": "q",
            "phones": [{"name": "p", "kind": "virtual"}],
            "models": [{"preset": "smollm-135m", "dtype": "int8"}],
            "paradigms": [{"kind": "slmaas"}],
            "workloads": [
                {
                    "name": "w",
                    "duration_s": 1,
                    "apps": [
                        {
                            "name": "a",
                            "arrival": {"kind": "closed_loop"},
                            "prompt_tokens": 4,
                            "output_tokens": 2,
                        }
                    ],
                }
            ],
        }
    )
    assert exp.models[0].spec().dtype == "int8"
