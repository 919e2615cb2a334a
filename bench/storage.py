"""Cold starts and context restores read from a real disk, beside the in-memory baseline.

Cold start: a model process (``agents.modelservice.slm_server``) started the way a phone agent
starts it, with the model in memory only (random weights generated in the process: the baseline,
as before phones had storage) and read cold from the phone's storage (page cache dropped first)
under each storage model. Restore: a context of --context tokens swapped out and back in through
the phone's storage (written fsync'd, read cold) against recomputing it with one prefill.
Medians of --runs runs; the storage directory must be on a real disk (the script says if not).

    python bench/storage.py [--preset smollm-135m] [--dtype fp32] [--runs 3] [--context 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agents.llm.kv_context import KVContext
from agents.llm.weights import load_model
from agents.modelservice.launch_spec import LaunchSpec
from agents.modelservice.model_process import ModelProcess
from agents.storage import PhoneStorage
from fleet.records import OWN_MODEL, ModelSpec
from fleet.storage_models import STORAGE_MODELS, storage_model


def cold_starts(spec: ModelSpec, root: Path, runs: int) -> dict[str, tuple[float, float, int]]:
    """name -> (median cold start s, median load s, bytes read)."""
    out = {}
    for name in ["memory", *STORAGE_MODELS]:
        starts, loads, read = [], [], 0
        for i in range(runs + 1):  # the first run installs the weights (not counted)
            launch = LaunchSpec(
                spec,
                OWN_MODEL,
                threads=1,
                storage_dir="" if name == "memory" else str(root),
                storage_model="none" if name == "memory" else name,
            )
            proc = ModelProcess(root / f"bench-{name}-{i}.sock", launch)
            ready = proc.start()
            proc.stop()
            if i:
                starts.append(ready.cold_start_s)
                loads.append(ready.load_s)
                read = ready.read_bytes
        out[name] = (statistics.median(starts), statistics.median(loads), read)
    return out


@torch.inference_mode()
def restores(spec: ModelSpec, root: Path, tokens: int, runs: int) -> dict[str, tuple[float, int]]:
    """name -> (median seconds to make a swapped or dropped context usable again, bytes)."""
    storage = PhoneStorage(root, storage_model("none"))
    model = load_model(spec, storage).model
    prompt = list(range(1, tokens + 1))
    out = {}
    for name in STORAGE_MODELS:
        storage = PhoneStorage(root, storage_model(name))
        times, moved = [], 0
        for _ in range(runs):
            ctx = KVContext(model, tokens)
            model([(ctx, prompt)])
            path = storage.path("swap", "bench.kv")
            with storage.writing(path) as io:
                io.bytes = ctx.swap_out(path)
            t0 = time.perf_counter()
            with storage.reading(path) as io:
                moved = io.bytes = ctx.swap_in(path)
            times.append(time.perf_counter() - t0)
        out[f"swap-in ({name})"] = (statistics.median(times), moved)
    times = []
    for _ in range(runs):
        ctx = KVContext(model, tokens)
        model([(ctx, prompt)])
        ctx.drop()
        t0 = time.perf_counter()
        model([(ctx, ctx.reset_for_recompute())])
        times.append(time.perf_counter() - t0)
    out["recompute"] = (statistics.median(times), ctx.used_bytes())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smollm-135m")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--context", type=int, default=256, help="tokens of the restored context")
    p.add_argument("--dir", default="", help="storage directory (default: a temporary one)")
    ns = p.parse_args()
    spec = ModelSpec(preset=ns.preset, dtype=ns.dtype)
    with tempfile.TemporaryDirectory(dir=ns.dir or Path.home() / ".cache") as tmp:
        root = Path(tmp)
        fs = PhoneStorage(root, storage_model("none")).filesystem
        ram = fs in ("tmpfs", "ramfs")
        print(f"storage: {root} on {fs}" + (" (RAM-backed: not disk figures)" if ram else ""))
        print(f"\ncold start of {ns.preset} {ns.dtype} (median of {ns.runs}):")
        print(f"{'weights from':<14}{'cold start s':>14}{'load s':>10}{'read MB':>10}")
        for name, (start, load, read) in cold_starts(spec, root, ns.runs).items():
            print(f"{name:<14}{start:>14.2f}{load:>10.2f}{read / 1e6:>10.0f}")
        torch.set_num_threads(1)
        print(f"\nmaking a {ns.context}-token context usable again (median of {ns.runs}):")
        print(f"{'how':<22}{'ms':>10}{'MB':>8}")
        for name, (took, moved) in restores(spec, root, ns.context, ns.runs).items():
            print(f"{name:<22}{took * 1000:>10.1f}{moved / 1e6:>8.1f}")


if __name__ == "__main__":
    main()
