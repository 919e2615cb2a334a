"""A phone's storage on a real disk: random weights installed once and read back cold, I/O held
to a storage model, RAM-backed directories flagged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from agents.llm.weights import load_model, random_model
from agents.storage import PhoneStorage, filesystem_of
from fleet.records import ModelSpec
from fleet.shapes import model_args
from fleet.storage_models import StorageModel, storage_model


def test_random_weights_are_installed_once_and_read_back_cold_and_equal(tmp_path):
    storage = PhoneStorage(tmp_path, storage_model("none"))
    spec = ModelSpec(preset="tiny", dtype="bf16", seed=3)
    first = load_model(spec, storage)
    again = load_model(spec, storage)
    assert first.install_s > 0 and again.install_s == 0  # written once, like an installed app
    files = list((tmp_path / "models" / "tiny-bf16-seed3").glob("*.safetensors"))
    assert again.read_bytes == sum(f.stat().st_size for f in files) > 0
    assert again.weights_label == "random weights"
    reference = random_model(model_args(spec), torch.bfloat16, 3)  # generated in bf16
    for (name, a), (_, b) in zip(reference.state_dict().items(), again.model.state_dict().items()):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b), name


def test_reads_and_writes_are_held_to_the_storage_model(tmp_path):
    slow = PhoneStorage(tmp_path, StorageModel("slow", 10e6, 5e6, 0.01))
    path = slow.path("blob")
    t0 = time.perf_counter()
    with slow.writing(path) as io:
        path.write_bytes(b"x" * 1_000_000)
        io.bytes = 1_000_000
    assert time.perf_counter() - t0 >= 0.2  # 1 MB at 5 MB/s + 10 ms
    t0 = time.perf_counter()
    with slow.reading(path) as io:
        io.bytes = len(path.read_bytes())
    assert time.perf_counter() - t0 >= 0.1  # 1 MB at 10 MB/s + 10 ms
    fast = PhoneStorage(tmp_path, storage_model("none"))
    t0 = time.perf_counter()
    with fast.reading(path) as io:
        io.bytes = len(path.read_bytes())
    assert time.perf_counter() - t0 < 0.1
    assert storage_model("emmc5.1").read_time_s(300_000_000) == pytest.approx(1.0003)
    with pytest.raises(ValueError, match="unknown storage model 'ssd'"):
        storage_model("ssd")


@pytest.mark.skipif(filesystem_of(Path("/dev/shm")) != "tmpfs", reason="no tmpfs at /dev/shm")
def test_a_ram_backed_storage_directory_is_flagged(tmp_path):
    shm = PhoneStorage(Path("/dev/shm") / tmp_path.name, storage_model("none"))
    try:
        assert shm.ram_backed and "RAM-backed" in shm.describe()["storage_warning"]
    finally:
        shm.root.rmdir()
    assert not PhoneStorage(tmp_path, storage_model("none")).ram_backed
