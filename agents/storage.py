"""A phone's storage on its host's disk: model files and swapped contexts, read cold.

Every read that stands for a read from the phone's flash first drops the file's pages from the
host's page cache (``fsync`` then ``posix_fadvise(DONTNEED)``), so it really comes from the disk,
and is then held to the phone's storage model (``fleet.storage_models``) if that is slower.
Writes are fsync'd and dropped from the cache as well. A storage directory on a RAM-backed file
system (tmpfs, ramfs) cannot behave like flash: the agent warns with the path.

    storage = PhoneStorage(Path("~/.cache/slm-fleet/phones/pixel-a"), storage_model("ufs3.1"))
    with storage.reading(path) as io: data = path.read_bytes(); io.bytes += len(data)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleet.storage_models import StorageModel

RAM_FILESYSTEMS = {"tmpfs", "ramfs"}


def filesystem_of(path: Path) -> str:
    """The file system type holding ``path`` (from /proc/self/mountinfo; "" if unknown)."""
    target = str(Path(path).resolve())
    best, kind = "", ""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, right.split()[0]
    return kind


def drop_cache(path: Path) -> None:
    """Write back and drop ``path``'s pages from the page cache: the next read hits the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class IoCount:
    bytes: int = 0


class PhoneStorage:
    def __init__(self, root: Path, model: StorageModel):
        self.root = Path(root).expanduser()
        self.model = model
        self.root.mkdir(parents=True, exist_ok=True)
        self.filesystem = filesystem_of(self.root)

    @property
    def ram_backed(self) -> bool:
        return self.filesystem in RAM_FILESYSTEMS

    def describe(self) -> dict[str, str]:
        facts = {
            "storage_dir": str(self.root),
            "storage_filesystem": self.filesystem or "unknown",
            "storage_model": self.model.name,
        }
        if self.ram_backed:
            facts["storage_warning"] = (
                f"{self.root} is on {self.filesystem} (RAM-backed): cold starts and swaps read "
                "from memory, not from storage"
            )
        return facts

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @contextlib.contextmanager
    def reading(self, *paths: Path) -> Iterator[IoCount]:
        """Read ``paths`` cold: their pages dropped first, the whole read held to the model."""
        for p in paths:
            drop_cache(p)
        io, t0 = IoCount(), time.perf_counter()
        yield io
        self._hold(self.model.read_time_s(io.bytes), t0)

    @contextlib.contextmanager
    def writing(self, path: Path) -> Iterator[IoCount]:
        """Write ``path`` durably (fsync'd, then dropped from the cache), held to the model."""
        io, t0 = IoCount(), time.perf_counter()
        yield io
        drop_cache(path)
        self._hold(self.model.write_time_s(io.bytes), t0)

    @staticmethod
    def _hold(target_s: float, t0: float) -> None:
        left = target_s - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """An exclusive lock among this phone's processes (one installs a model, others wait)."""
        with open(self.path("locks", name), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
