"""Shared fixtures: real phone agent processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

TOKEN = "test-token"


def pytest_configure(config):
    """Build the engine's native kernels once, before any test starts a process, in one folder
    every process shares, even those that move their cache (XDG_CACHE_HOME) or their HOME (an
    emulated phone's sandbox passes TORCH_EXTENSIONS_DIR through)."""
    from torch.utils.cpp_extension import get_default_build_root

    from agents.llm import native

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", get_default_build_root())
    native.ops()


@contextmanager
def agent_process(*args: str, token: str = TOKEN):
    """A real ``fleet-agent`` process; yields (address, Popen)."""
    env = dict(os.environ, FLEET_AGENT_TOKEN=token)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.main", "--exit-on-stdin-eof", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, f"agent exited with {proc.wait()}"
        ready = json.loads(line)
        yield f"127.0.0.1:{ready['port']}", proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def agent():
    with agent_process(
        "--name", "test-phone", "--memory-budget-mb", "1024", "--cpu-threads", "2"
    ) as (address, proc):
        yield address, proc
