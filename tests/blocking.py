"""Run the phone host's coroutines from a test's plain code: on one event loop in a daemon
thread, as the host's Ray actor runs them on its own loop.

    for kind, payload in blocking_iter(host.run_trial("a", spec, run)): ...
    assert blocking(host.stop_trial("a"))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="test-loop", daemon=True).start()
        return _loop


def blocking(coro: Coroutine[Any, Any, T]) -> T:
    """The coroutine's result, run on the test loop; this thread waits."""
    return asyncio.run_coroutine_threadsafe(coro, loop()).result()


def blocking_iter(items: AsyncIterator[T]) -> Iterator[T]:
    """The async iterator's items, each awaited on the test loop."""

    async def step() -> tuple[bool, Any]:
        try:
            return True, await anext(items)
        except StopAsyncIteration:
            return False, None

    try:
        while True:
            more, item = blocking(step())
            if not more:
                return
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            blocking(aclose())
