"""Serving figures of the shared model service, measured on this machine in this run.

1. Batched decode: aggregate tokens/s of one decode step over B sequences, B = 1, 2, 4, 8, and the
   ratio to B = 1 (what continuous batching buys SLMaaS and agent-OS).
2. Context switch: making an evicted context usable again, restore from storage (read the swap
   file, fsync'd when written) vs recompute (prefill its tokens), for 256, 1024, 2048 tokens.

Medians of --runs runs.

    python bench/serving.py [--preset smollm-135m] [--dtype fp32] [--threads 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agents.llm.kv_context import KVContext
from agents.llm.weights import DTYPES, random_model
from fleet.shapes import ModelArgs


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def batched_decode(model, batch_sizes, runs: int, steps: int = 16) -> dict[int, float]:
    out = {}
    for b in batch_sizes:
        ctxs = [KVContext(model, 256) for _ in range(b)]
        for i, c in enumerate(ctxs):  # different lengths: a ragged batch, as in serving
            model([(c, list(range(1, 64 + 8 * i)))])

        def decode(ctxs=ctxs):
            for _ in range(steps):
                model([(c, [7]) for c in ctxs])
                for c in ctxs:
                    c.truncate(c.length - 1)  # keep lengths fixed across runs

        decode()  # warm-up
        out[b] = b * steps / median_s(decode, runs)
    return out


@torch.inference_mode()
def context_switch(model, lengths, runs: int) -> dict[int, tuple[float, float, int]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ctx.kv"
        for n in lengths:
            ctx = KVContext(model, n)
            model([(ctx, list(range(n)))])
            nbytes = ctx.used_bytes()

            def restore(ctx=ctx):
                ctx.swap_out(path)  # not timed below: only the way back is the switch
                t0 = time.perf_counter()
                ctx.swap_in(path)
                return time.perf_counter() - t0

            def recompute(ctx=ctx):
                ctx.drop()
                t0 = time.perf_counter()
                model([(ctx, ctx.reset_for_recompute())])
                return time.perf_counter() - t0

            restore_s = statistics.median(restore() for _ in range(runs))
            recompute_s = statistics.median(recompute() for _ in range(runs))
            out[n] = (restore_s, recompute_s, nbytes)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smollm-135m")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    model = random_model(ModelArgs.from_name(ns.preset), DTYPES[ns.dtype], 0)
    print(
        f"{ns.preset} {ns.dtype}, {ns.threads} threads, random weights, torch "
        f"{torch.__version__}, medians of {ns.runs} runs"
    )

    rates = batched_decode(model, [1, 2, 4, 8], ns.runs)
    print(f"\n{'batch':>5}{'aggregate tok/s':>17}{'per sequence':>14}{'x batch 1':>11}")
    for b, r in rates.items():
        print(f"{b:>5}{r:>17.1f}{r / b:>14.1f}{r / rates[1]:>11.2f}")

    switches = context_switch(model, [256, 1024, 2048], ns.runs)
    header = ("tokens", 6), ("KV MiB", 8), ("restore ms", 12), ("recompute ms", 14)
    print("\n" + "".join(f"{name:>{w}}" for name, w in header) + f"{'recompute/restore':>19}")
    for n, (restore_s, recompute_s, nbytes) in switches.items():
        print(
            f"{n:>6}{nbytes / 2**20:>8.1f}{restore_s * 1e3:>12.1f}{recompute_s * 1e3:>14.1f}"
            f"{recompute_s / restore_s:>19.1f}"
        )


if __name__ == "__main__":
    main()
