"""Engine speed beside its memory-bandwidth ceiling and beside Hugging Face, measured in one run.

Decode on a CPU is memory-bound: every generated token reads all the weights once, so
    ceiling tok/s = read bandwidth (a sum over 512 MiB, same threads) / bytes of weights.
For each dtype (fp32, bf16, int8 weight-only) and thread count it prints prefill (256 tokens)
and batch-1 decode tokens/s, the ceiling and the ratio to it, Hugging Face ``transformers``
``LlamaForCausalLM.generate`` on the same shape, weights, dtype and threads (int8 beside HF
bf16), and the aggregate decode rate of a batch of 8. The engine's and HF's repetitions
alternate, so a shared machine's slow moments fall on both; every figure is the median of --runs
runs, and each ratio to HF is also printed as the range of the repetitions' own ratios;
the targets are printed with hit or miss, and everything goes to bench/results/engine_speed.json.
transformers is a dev-only dependency (``pip install .[dev]``), never needed by the agent.

    python bench/engine_speed.py [--preset smollm-135m] [--runs 5] [--decode-tokens 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from agents.llm import native
from agents.llm.bf16_products import native_bf16
from agents.llm.generate import decode_one_token, generate, prefill
from agents.llm.kv_context import KVContext
from agents.llm.quant import quantize_model
from agents.llm.transformer import Transformer
from agents.llm.weights import DTYPES, random_model
from fleet.shapes import ModelArgs

PROMPT = 256
BATCH = 8
RESULTS = Path(__file__).resolve().parent / "results" / "engine_speed.json"


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_bandwidth_bytes_per_s(threads: int, runs: int, size_mib: int = 512) -> float:
    """Median bytes read per second summing a buffer larger than any cache."""
    torch.set_num_threads(threads)
    buf = torch.ones(size_mib * 2**20 // 4, dtype=torch.float32)
    buf.sum()  # fault the pages in
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return buf.numel() * 4 / statistics.median(times)


def matmul_flops_per_s(threads: int, runs: int, n: int = 1024) -> float:
    """The best fp32 FLOP/s of ``runs`` (n, n) x (n, n) matrix products: the compute ceiling,
    as the read bandwidth is the memory one (the native kernels multiply in fp32 too). The
    best, not the median: a ceiling is what the CPU can do, and a slow moment would put it
    below what the engine reaches."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def product_flops(args: ModelArgs, tokens: int, head_rows: int) -> int:
    """FLOPs of the matrix products (and attention) of ``tokens`` new tokens of one prompt
    from position 0, the head run for ``head_rows`` of them."""
    kv = args.n_kv_head * args.head_dim
    layer = 2 * args.dim * args.dim + 2 * args.dim * kv + 3 * args.dim * args.intermediate_size
    attention = 4 * args.n_head * args.head_dim * tokens * (tokens + 1) // 2  # QK^T and PV
    return (
        2 * args.n_layer * layer * tokens
        + args.n_layer * attention
        + (2 * args.vocab_size * args.dim * head_rows)
    )


def batch_ceiling_tok_s(weight_bytes: int, flops_per_token: int, bandwidth: float,
                        peak: float) -> float:  # fmt: skip
    """The most tokens/s a batch of BATCH can decode on this CPU: a step reads every weight
    once (bytes over the read bandwidth) and multiplies BATCH rows (FLOPs over the compute
    ceiling), and takes at least the longer of the two."""
    return BATCH / max(weight_bytes / bandwidth, BATCH * flops_per_token / peak)


def engine_repetition(model: Transformer, prompt: list[int], decode_tokens: int) -> tuple:
    """One repetition of the engine: seconds of a prefill, of ``decode_tokens`` batch-1 decode
    steps after it, and of as many steps of a batch of BATCH."""
    ctx = KVContext(model, capacity=PROMPT + decode_tokens)
    t0 = time.perf_counter()
    logits = prefill(model, ctx, prompt)
    prefill_s = time.perf_counter() - t0
    tok = int(logits.argmax())
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        tok = int(decode_one_token(model, ctx, tok).argmax())
    decode_s = time.perf_counter() - t0
    contexts = [KVContext(model, capacity=32 + decode_tokens) for _ in range(BATCH)]
    toks = [int(model([(c, prompt[i : i + 32])])[0].argmax()) for i, c in enumerate(contexts)]
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        toks = model([(c, [t]) for c, t in zip(contexts, toks)]).argmax(-1).tolist()
    return prefill_s, decode_s, time.perf_counter() - t0


def hf_repetition(hf, ids: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    """One repetition of Hugging Face: seconds of generate() of one token (the prefill) and the
    extra seconds of ``decode_tokens`` more."""

    def run(n: int) -> float:
        t0 = time.perf_counter()
        hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                    eos_token_id=None)  # fmt: skip
        return time.perf_counter() - t0

    first = run(1)
    return first, run(1 + decode_tokens) - first


@torch.inference_mode()
def speed(model: Transformer, hf, runs: int, decode_tokens: int) -> dict:
    """Prefill and batch-1 decode tokens/s, the aggregate decode tokens/s of BATCH and, with
    ``hf``, the same prefill and decode of Hugging Face. The repetitions alternate (engine, HF,
    engine, HF, ...), so both meet the same moments of a shared machine; each figure is the
    median of its repetitions, and each ratio to HF also comes with the range of the
    repetitions' own ratios."""
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.args.vocab_size, (PROMPT,), generator=gen).tolist()
    ids = torch.tensor([prompt])
    prefill(model, KVContext(model), prompt[:32])  # warm-up
    if hf is not None:
        hf_repetition(hf, ids, 1)  # warm-up
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(engine_repetition(model, prompt, decode_tokens))
        if hf is not None:
            theirs.append(hf_repetition(hf, ids, decode_tokens))
    med = [statistics.median(x) for x in zip(*ours)]
    row = {
        "prefill_tok_s": PROMPT / med[0],
        "decode_tok_s": decode_tokens / med[1],
        "batch8_tok_s": BATCH * decode_tokens / med[2],
    }
    if theirs:
        hf_prefill, hf_decode = (statistics.median(x) for x in zip(*theirs))
        row["hf_prefill_tok_s"] = PROMPT / hf_prefill
        row["hf_decode_tok_s"] = decode_tokens / hf_decode
        for i, name in ((0, "prefill"), (1, "decode")):
            ratios = [h[i] / o[i] for o, h in zip(ours, theirs)]  # the engine's speed over HF's
            row[f"{name}_x_hf_range"] = [min(ratios), max(ratios)]
    return row


def hf_model(model: Transformer, dtype: torch.dtype):
    """transformers' own Llama with this model's shape and weights, in ``dtype``."""
    import transformers

    a = model.args
    config = transformers.LlamaConfig(
        hidden_size=a.dim,
        intermediate_size=a.intermediate_size,
        num_hidden_layers=a.n_layer,
        num_attention_heads=a.n_head,
        num_key_value_heads=a.n_kv_head,
        vocab_size=a.vocab_size,
        max_position_embeddings=a.max_position,
        rms_norm_eps=a.norm_eps,
        rope_theta=a.rope_base,
        tie_word_embeddings=a.tie_embeddings,
        attention_bias=a.qkv_bias,
    )
    hf = transformers.LlamaForCausalLM(config).to(dtype).eval()
    state = {
        f"model.{k}" if not k.startswith("lm_head") else k: v for k, v in model.state_dict().items()
    }
    hf.load_state_dict(state, strict=False)
    if a.tie_embeddings:
        hf.tie_weights()
    return hf


def greedy_agreement(preset: str, tokens: int = 16) -> dict[str, float]:
    """Greedy tokens of int8 against fp32 with the same weights: the common prefix length,
    over three prompts."""
    ref = random_model(ModelArgs.from_name(preset), torch.float32, 0)
    q = quantize_model(copy.deepcopy(ref))
    prefixes = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, ref.args.vocab_size, (32,), generator=g).tolist()
        a, b = generate(ref, prompt, tokens), generate(q, prompt, tokens)
        n = 0
        while n < tokens and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    return {"tokens": tokens, "common_prefix": prefixes, "rate": sum(prefixes) / (3 * tokens)}


def build(args: ModelArgs, dtype_name: str) -> Transformer:
    if dtype_name == "int8":
        return quantize_model(random_model(args, torch.bfloat16, seed=0))
    return random_model(args, DTYPES[dtype_name], seed=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smollm-135m")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "int8"], choices=list(DTYPES))
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    ns = p.parse_args()

    args = ModelArgs.from_name(ns.preset)
    cpu = {"model": cpu_model(), "bf16_instructions": native_bf16()}
    print(
        f"{ns.preset}: {args.num_params() / 1e6:.1f}M parameters, random weights, "
        f"torch {torch.__version__}, medians of {ns.runs} runs, {ns.decode_tokens} decode tokens"
    )
    print(f"CPU: {cpu['model']}, bf16 instructions: {'yes' if cpu['bf16_instructions'] else 'no'}")
    native.ops()  # compiled now if this machine has not yet: its time is reported apart
    kernels = native.status()
    print(
        f"native kernels: {'loaded' if kernels.loaded else 'NOT loaded: ' + kernels.reason}"
        f" (compile or load: {kernels.build_s:.1f} s, not in any figure below)"
    )
    bandwidth = {t: read_bandwidth_bytes_per_s(t, ns.runs) for t in ns.threads}
    peak = {t: matmul_flops_per_s(t, ns.runs) for t in ns.threads}
    for t, bw in bandwidth.items():
        print(
            f"{t} thread(s): read bandwidth {bw / 1e9:.1f} GB/s, "
            f"fp32 matrix product {peak[t] / 1e9:.0f} GFLOP/s"
        )
    prefill_flops = product_flops(args, PROMPT, 1)
    token_flops = product_flops(args, 1, 1)
    rows = []
    for dtype_name in ns.dtypes:
        model = build(args, dtype_name)
        weight_bytes = model.weight_bytes()  # a decode step reads every weight once
        hf = None
        if not ns.no_hf:  # int8 against HF bf16: what a user would otherwise run
            hf_dtype = torch.bfloat16 if dtype_name == "int8" else DTYPES[dtype_name]
            source = build(args, "bf16") if dtype_name == "int8" else model
            hf = hf_model(source, hf_dtype)
        for t in ns.threads:
            torch.set_num_threads(t)
            row = {"dtype": dtype_name, "threads": t, "weight_bytes": weight_bytes}
            row.update(speed(model, hf, ns.runs, ns.decode_tokens))
            row["ceiling_tok_s"] = bandwidth[t] / weight_bytes
            row["decode_vs_ceiling"] = row["decode_tok_s"] / row["ceiling_tok_s"]
            row["matmul_flops_per_s"] = peak[t]
            # prefill is compute-bound: its FLOP/s against the fp32 matrix product's
            row["prefill_vs_compute"] = prefill_flops * row["prefill_tok_s"] / PROMPT / peak[t]
            if "hf_prefill_tok_s" in row:
                hf_rate = prefill_flops * row["hf_prefill_tok_s"] / PROMPT
                row["hf_prefill_vs_compute"] = hf_rate / peak[t]
            row["batch8_ceiling_tok_s"] = batch_ceiling_tok_s(
                weight_bytes, token_flops, bandwidth[t], peak[t]
            )
            rows.append(row)
        del model, hf
    report(rows, args, ns)
    agreement = greedy_agreement("tiny") | {"preset": "tiny"}
    on_preset = greedy_agreement(ns.preset) | {"preset": ns.preset}
    for a in (agreement, on_preset):
        print(
            f"int8 greedy tokens vs fp32, {a['preset']}: common prefix {a['common_prefix']} "
            f"of {a['tokens']} (agreement {a['rate']:.2f})"
        )
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(
        json.dumps(
            {
                "preset": ns.preset,
                "runs": ns.runs,
                "decode_tokens": ns.decode_tokens,
                "torch": torch.__version__,
                "machine": platform.machine(),
                "processor": platform.processor(),
                "cpu": cpu,
                "native_kernels": {
                    "loaded": kernels.loaded,
                    "build_s": kernels.build_s,
                    "reason": kernels.reason,
                },  # fmt: skip
                "read_bandwidth_bytes_per_s": {str(t): bw for t, bw in bandwidth.items()},
                "matmul_flops_per_s": {str(t): f for t, f in peak.items()},
                "rows": rows,
                "int8_agreement": [agreement, on_preset],
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {ns.out}")


def report(rows: list[dict], args: ModelArgs, ns) -> None:
    header = (
        f"{'dtype':<6}{'thr':>4}{'MiB':>6}{'prefill':>9}{'HF':>8}{'x':>6}"
        f"{'decode':>8}{'HF':>7}{'x':>6}{'ceiling':>9}{'/ceil':>7}{'batch8':>8}{'x b1':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        hf_p, hf_d = r.get("hf_prefill_tok_s", 0.0), r.get("hf_decode_tok_s", 0.0)
        x_p = r["prefill_tok_s"] / hf_p if hf_p else 0.0
        x_d = r["decode_tok_s"] / hf_d if hf_d else 0.0
        print(
            f"{r['dtype']:<6}{r['threads']:>4}{r['weight_bytes'] / 2**20:>6.0f}"
            f"{r['prefill_tok_s']:>9.0f}{hf_p:>8.0f}{x_p:>6.2f}"
            f"{r['decode_tok_s']:>8.1f}{hf_d:>7.1f}{x_d:>6.2f}"
            f"{r['ceiling_tok_s']:>9.1f}{r['decode_vs_ceiling']:>7.2f}"
            f"{r['batch8_tok_s']:>8.1f}{r['batch8_tok_s'] / r['decode_tok_s']:>6.2f}"
        )
    ranged = [r for r in rows if "decode_x_hf_range" in r]
    if ranged:
        print("x HF in each repetition (min-max; engine and HF repetitions alternate):")
        for r in ranged:
            (p0, p1), (d0, d1) = r["prefill_x_hf_range"], r["decode_x_hf_range"]
            key = f"{r['dtype']} {r['threads']}t"
            print(f"  {key:<9} prefill {p0:.2f}-{p1:.2f}   decode {d0:.2f}-{d1:.2f}")
    print("targets (hit/miss):")
    by = {(r["dtype"], r["threads"]): r for r in rows}
    for r in rows:
        key = f"{r['dtype']} {r['threads']}t"
        checks = []
        if r.get("hf_decode_tok_s") and r["dtype"] != "int8":
            checks.append(("decode >= 1.3x HF", r["decode_tok_s"] / r["hf_decode_tok_s"], 1.3))
            checks.append(("prefill >= 1.2x HF", r["prefill_tok_s"] / r["hf_prefill_tok_s"], 1.2))
        if r["dtype"] == "fp32":
            checks.append(("decode >= 0.60 of ceiling", r["decode_vs_ceiling"], 0.60))
        checks.append(("batch 8 >= 4x batch 1", r["batch8_tok_s"] / r["decode_tok_s"], 4.0))
        bf16 = by.get(("bf16", r["threads"]))
        if r["dtype"] == "int8" and bf16:
            checks.append(("int8 decode >= bf16", r["decode_tok_s"] / bf16["decode_tok_s"], 1.0))
            share = r["weight_bytes"] / bf16["weight_bytes"]
            checks.append(("int8 weights <= 0.55 of bf16", share, -0.55))
        for name, value, target in checks:  # a negative target: at most its magnitude
            hit = value <= -target if target < 0 else value >= target
            print(f"  {key:<9} {name:<30} {value:6.2f}  {'hit' if hit else 'MISS'}{bound(r, name)}")


def bound(row: dict, check: str) -> str:
    """What this CPU allows a target, printed beside it."""
    if check.startswith("batch 8"):
        ceiling = row["batch8_ceiling_tok_s"]
        share = row["batch8_tok_s"] / ceiling
        return f"  (batch 8 at {share:.2f} of its ceiling, {ceiling:.0f} tok/s)"
    if check.startswith("prefill") and "hf_prefill_vs_compute" in row:
        return (
            f"  (of the fp32 matrix product's FLOP/s: engine {row['prefill_vs_compute']:.2f},"
            f" HF {row['hf_prefill_vs_compute']:.2f})"
        )
    return ""


if __name__ == "__main__":
    main()
