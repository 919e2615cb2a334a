"""Prefill chunk size: how long a foreground request waits behind background prefill, against what
the background loses, on the real engine in this process.

A background app keeps long prompts coming (closed loop); a foreground app sends a short request
every --fg-every-s seconds. Under the priority scheduler (agent-OS), a foreground request can
start only between steps, so it waits for at most one background chunk; FCFS (SLMaaS) batches it
with the chunk. For each chunk size: foreground TTFT p50 and p90 (ms) and background output
tokens/s, medians over --runs runs, side by side.

    python bench/prefill_chunk.py [--preset smollm-135m] [--threads 2] [--seconds 6] [--runs 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import numpy as np
import torch

from agents.llm.weights import random_model
from agents.modelservice.scheduler import ServiceRequest
from agents.modelservice.serving_engine import ServingEngine
from fleet.records import SchedulerPolicy, ServiceOptions
from fleet.shapes import ModelArgs

CHUNKS = (16, 32, 64, 128, 256, 512)


def one_run(model, policy, chunk: int, seconds: float, fg_every_s: float, bg_prompt: int):
    opts = ServiceOptions(
        scheduler=policy, max_batch_size=8, prefill_chunk_tokens=chunk, prefix_cache=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        engine = ServingEngine(model, opts, tmp)
        stop = threading.Event()
        loop = threading.Thread(target=engine.run_forever, args=(stop,), daemon=True)
        loop.start()
        vocab = model.args.vocab_size
        rng = np.random.default_rng(0)
        ttfts: list[float] = []
        bg_tokens = [0]

        def submit(name: str, n_prompt: int, n_out: int, fg: bool, done: threading.Event):
            sent = time.monotonic()
            first: list[float] = []

            def sink(item) -> None:
                if isinstance(item, int):
                    if not first:
                        first.append(time.monotonic())
                    if not fg:
                        bg_tokens[0] += 1
                else:
                    if fg and first:
                        ttfts.append(first[0] - sent)
                    done.set()

            r = ServiceRequest(name, name, rng.integers(0, vocab, n_prompt).tolist(), n_out)
            r.foreground, r.sink = fg, sink
            engine.submit(r)

        def background() -> None:
            i = 0
            while not stop.is_set():
                done = threading.Event()
                submit(f"bg{i}", bg_prompt, 8, False, done)
                done.wait(60)
                i += 1

        threading.Thread(target=background, daemon=True).start()
        t0 = time.monotonic()
        fg_done = []
        while time.monotonic() - t0 < seconds:
            done = threading.Event()
            submit(f"fg{len(fg_done)}", 16, 4, True, done)
            fg_done.append(done)
            time.sleep(fg_every_s)
        elapsed = time.monotonic() - t0
        for d in fg_done:
            d.wait(30)
        stop.set()
        loop.join(5)
    return (
        float(np.percentile(ttfts, 50)) * 1000,
        float(np.percentile(ttfts, 90)) * 1000,
        bg_tokens[0] / elapsed,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smollm-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--fg-every-s", type=float, default=0.5)
    p.add_argument("--bg-prompt", type=int, default=768)
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    model = random_model(ModelArgs.from_name(ns.preset), torch.float32, 0)
    print(f"{ns.preset} fp32, {ns.threads} threads, background prompts of {ns.bg_prompt} tokens")
    print(f"{'policy':<10}{'chunk':>6}{'fg TTFT p50 ms':>16}{'p90 ms':>9}{'bg tok/s':>10}")
    for policy in (SchedulerPolicy.PRIORITY, SchedulerPolicy.FCFS):
        for chunk in CHUNKS:
            runs = [
                one_run(model, policy, chunk, ns.seconds, ns.fg_every_s, ns.bg_prompt)
                for _ in range(ns.runs)
            ]
            p50, p90, bg = (statistics.median(x) for x in zip(*runs))
            print(f"{policy.value:<10}{chunk:>6}{p50:>16.0f}{p90:>9.0f}{bg:>10.1f}")


if __name__ == "__main__":
    main()
