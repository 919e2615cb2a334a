"""The engine's native kernels (native.cpp), built at run time: what a decode step runs.

A decode step multiplies one row (a batch: a few rows) by every matrix, and reads each weight
once, so its speed is how fast the weights stream in. PyTorch's CPU kernels for these shapes
leave much of that on the table on the CPUs measured: its bf16 ``torch.mv`` and int8 weight
kernel (``torch._weight_int8pack_mm``) where the CPU has no bf16 instructions, and its fp32
product of a few rows, which gains little from a second thread. ``native.cpp`` loads each
weight vector once, widens it to fp32 in registers and multiplies it into every row (fp32
accumulation), over PyTorch's own threads (``at::parallel_for``). Measured on an AMD EPYC VM
(AVX2), SmolLM-135M's 210 layer matrices, one thread, one row: bf16 16 ms against
``torch.mv``'s 24, int8 12 against the int8 kernel's 20, fp32 28.5 against MKL's 32.3; eight
rows: bf16 47 against 175 (PyTorch's bf16 product), int8 34 against 49, fp32 55 against 80.
Beside the products: a decode step's attention over every sequence's own KV cache in one call
a layer, and RMSNorm of a few fp32 rows (decode_step.py).

The library is compiled once per machine and source (``torch.utils.cpp_extension``, about 15 s,
cached under PyTorch's extension folder, ``$TORCH_EXTENSIONS_DIR`` to move it) for the CPU it runs
on, and loaded into every later process in milliseconds. Without a compiler or ninja, or with
``SLM_FLEET_NATIVE=0``, ``ops()`` is None and the callers keep PyTorch's products (same results to
fp32 rounding); ``status()`` says which, and how long the build took.

    kernels = ops()
    if kernels is not None:
        y = kernels.bf16_rows(x, w)            # x (M, K) bf16 or fp32, w (N, K) bf16 -> (M, N)
        y = kernels.fp32_rows(x, w)            # w (N, K) fp32
        y = kernels.int8_rows(x, q, scales)    # q (N, K) int8, scales (N,) bf16
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
SWITCH = "SLM_FLEET_NATIVE"  # "0": PyTorch's products only
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]
NATIVE_MAX_ROWS = 16  # bf16 and fp32 row products of up to this many rows run here


@dataclass
class Status:
    loaded: bool
    build_s: float  # seconds to compile (or load an earlier build of) the library
    reason: str  # why it is not loaded; "" when it is


_status = Status(False, 0.0, "not tried")


STALE_LOCK_S = 300.0  # a build takes about 15 s: an older lock is a killed build's


def _build_place(root: str) -> tuple[str, Path, Path]:
    """The library's name, its build folder and a copy of the source inside it. The name is a
    digest of what the build depends on (the source, the flags, torch, Python, the CPU), and
    every process compiles the same copy, so checkouts at other paths (a phone's bundle, a
    clean clone) reuse one build instead of rebuilding it in turn. A lock left by a build
    that was killed is removed: PyTorch would wait on it forever."""
    text = SOURCE.read_bytes()
    key = f"{FLAGS} {torch.__version__} {sys.version_info[:2]} {_cpu_tag()}".encode()
    name = f"slm_fleet_native_{hashlib.sha256(text + key).hexdigest()[:16]}"
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or root) / name
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "native.cpp"
    if not source.is_file():
        tmp = folder / f".native.cpp.{os.getpid()}"
        tmp.write_bytes(text)
        os.replace(tmp, source)
    lock = folder / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
    except FileNotFoundError:
        pass
    return name, folder, source


def _cpu_tag() -> str:
    """A short digest of what the library is compiled for (``-march=native``): the machine and
    its CPU's instruction flags, so a build folder shared by different CPUs keeps one each."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


@functools.cache
def ops() -> Any | None:
    """``torch.ops.slm_fleet_native`` once the library is built and loaded, else None."""
    global _status
    if os.environ.get(SWITCH, "1") == "0":
        _status = Status(False, 0.0, f"{SWITCH}=0")
        return None
    t0 = time.perf_counter()
    try:
        name, folder, source = _build_place(_default_root())
        built = folder / f"{name}.so"
        if built.is_file() and not (folder / "lock").exists():  # named by its inputs' digest
            torch.ops.load_library(str(built))  # a process start skips the build's checks
        else:
            _build(name, folder, source)
    except Exception as e:  # no compiler, no ninja, a failed build: PyTorch's products stay
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        _status = Status(False, time.perf_counter() - t0, reason)
        log.warning("native kernels unavailable, using PyTorch's operators: %s", reason)
        return None
    _status = Status(True, time.perf_counter() - t0, "")
    return torch.ops.slm_fleet_native


def _default_root() -> str:
    """PyTorch's extension folder on Linux (``$XDG_CACHE_HOME`` or ~/.cache, then
    torch_extensions), found without importing ``torch.utils.cpp_extension``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "torch_extensions")


def _build(name: str, folder: Path, source: Path) -> None:
    from torch.utils import cpp_extension

    venv_bin = str(Path(sys.executable).parent)  # the ninja of `pip install ninja`
    if shutil.which("ninja") is None and shutil.which("ninja", path=venv_bin):
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    cpp_extension.load(
        name=name,
        sources=[str(source)],
        extra_cflags=FLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )


def status() -> Status:
    """Whether the library is loaded, the seconds its build or load took, and why not."""
    return _status


if __name__ == "__main__":  # build it now (make does, so that no run pays it); prints the status
    ops()
    print(status())
