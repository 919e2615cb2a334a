"""Engine speed beside its memory-bandwidth ceiling, measured on this machine in this run.

Decode on a CPU is memory-bound: every generated token reads all the weights once, so
    ceiling tok/s = measured copy bandwidth / bytes of weights read per token.
Prints prefill (256 tokens) and decode tokens/s for a preset at 1 and 2 threads in fp32 and bf16,
the ceiling for each, and the ratio to it. Figures are medians of --runs runs.

    python bench/engine_speed.py [--preset smollm-135m] [--runs 5] [--decode-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from agents.llm.generate import decode_one_token, prefill
from agents.llm.kv_context import KVContext
from agents.llm.weights import DTYPES, random_model
from fleet.shapes import ModelArgs


def copy_bandwidth_bytes_per_s(threads: int, runs: int, size_mib: int = 512) -> float:
    """Median bytes moved per second (read + write) copying a buffer larger than any cache."""
    torch.set_num_threads(threads)
    src = torch.ones(size_mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


@torch.inference_mode()
def measure(model, threads: int, runs: int, decode_tokens: int) -> tuple[float, float]:
    """(prefill tok/s for 256 tokens, decode tok/s), medians over runs."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.args.vocab_size, (1, 256), generator=gen)
    prompt = prompt[0].tolist()
    prefill(model, KVContext(model), prompt[:32])  # warm-up
    prefill_s, decode_s = [], []
    for _ in range(runs):
        ctx = KVContext(model, capacity=256 + decode_tokens)
        t0 = time.perf_counter()
        logits = prefill(model, ctx, prompt)
        prefill_s.append(time.perf_counter() - t0)
        tok = int(logits.argmax())
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            tok = int(decode_one_token(model, ctx, tok).argmax())
        decode_s.append(time.perf_counter() - t0)
    return 256 / statistics.median(prefill_s), decode_tokens / statistics.median(decode_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smollm-135m")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ns = p.parse_args()

    args = ModelArgs.from_name(ns.preset)
    print(
        f"{ns.preset}: {args.num_params() / 1e6:.1f}M parameters, random weights, "
        f"torch {torch.__version__}, medians of {ns.runs} runs"
    )
    bandwidth = {t: copy_bandwidth_bytes_per_s(t, ns.runs) for t in ns.threads}
    for t, bw in bandwidth.items():
        print(f"copy bandwidth, {t} thread(s): {bw / 1e9:.1f} GB/s")
    header = (
        f"{'dtype':<6}{'threads':>8}{'weights MiB':>13}{'prefill tok/s':>15}"
        f"{'decode tok/s':>14}{'ceiling tok/s':>15}{'decode/ceiling':>16}"
    )
    print(header)
    print("-" * len(header))
    for dtype_name in ns.dtypes:
        dtype = DTYPES[dtype_name]
        model = random_model(args, dtype, seed=0)
        weight_bytes = args.weight_bytes(dtype_name)  # a decode step reads every weight once
        for t in ns.threads:
            prefill_tps, decode_tps = measure(model, t, ns.runs, ns.decode_tokens)
            ceiling = bandwidth[t] / weight_bytes
            print(
                f"{dtype_name:<6}{t:>8}{weight_bytes / 2**20:>13.0f}{prefill_tps:>15.0f}"
                f"{decode_tps:>14.1f}{ceiling:>15.1f}{decode_tps / ceiling:>16.2f}"
            )
        del model


if __name__ == "__main__":
    main()
