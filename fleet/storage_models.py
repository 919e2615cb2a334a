"""Phone storage models: how fast a phone's flash reads and writes, to rehearse on a server.

A virtual phone keeps its model files and swapped contexts on a real disk of its host; a storage
model throttles that I/O to a phone's figures, so a cold start or a context swap costs what it
would cost on the phone. Throttling can only slow the host's disk down: when the host is slower
than the model, the I/O runs at the host's speed (and the phone's description says so).

Presets (sequential figures as published; a phone's random small-block figures are lower):
- ``ufs3.1``: UFS 3.1 (JEDEC JESD220E, two lanes of HS-G4), vendor datasheets give about
  2100 MB/s sequential read and 1200 MB/s sequential write (e.g. Samsung and Kioxia UFS 3.1
  parts); 0.1 ms per request.
- ``emmc5.1``: eMMC 5.1 (JEDEC JESD84-B51, HS400 bus of 400 MB/s), about 300 MB/s read and
  125 MB/s write on common parts; 0.3 ms per request.
- ``none``: no throttling, the host disk as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1_000_000


@dataclass(frozen=True)
class StorageModel:
    name: str = "none"
    read_bytes_per_s: float = 0.0  # 0: unthrottled
    write_bytes_per_s: float = 0.0
    latency_s: float = 0.0  # per read or write request

    def read_time_s(self, num_bytes: int) -> float:
        """How long reading ``num_bytes`` takes on this storage (0 when unthrottled)."""
        if not self.read_bytes_per_s:
            return 0.0
        return self.latency_s + num_bytes / self.read_bytes_per_s

    def write_time_s(self, num_bytes: int) -> float:
        if not self.write_bytes_per_s:
            return 0.0
        return self.latency_s + num_bytes / self.write_bytes_per_s


STORAGE_MODELS = {
    "none": StorageModel(),
    "ufs3.1": StorageModel("ufs3.1", 2100 * MB, 1200 * MB, 0.0001),
    "emmc5.1": StorageModel("emmc5.1", 300 * MB, 125 * MB, 0.0003),
}


def storage_model(name: str) -> StorageModel:
    if name not in STORAGE_MODELS:
        raise ValueError(f"unknown storage model {name!r}; known: {', '.join(STORAGE_MODELS)}")
    return STORAGE_MODELS[name]
