"""Explains a hung test before pytest-timeout fails it.

pytest-timeout (`timeout` in pyproject.toml) fails a test that runs too long, so one hang costs
minutes, not the whole CI budget; its thread dump shows only the event loop idling in select().
This plugin prints what that loop is actually waiting for: a little before the timeout, the stack
of every asyncio task of the tests' session loop, and which test phase was running.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from collections.abc import AsyncIterator, Generator

import pytest

_loop: asyncio.AbstractEventLoop | None = None
WARN_BEFORE_TIMEOUT_S = 20.0


@pytest.fixture(scope="session", autouse=True)
async def _session_loop() -> AsyncIterator[None]:
    """Remembers the loop every async test and fixture runs in (loop_scope "session")."""
    global _loop
    _loop = asyncio.get_running_loop()
    yield
    _loop = None


def _dump_tasks(nodeid: str) -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    out.write(f"\n=== {nodeid} is hanging: {len(tasks)} asyncio tasks ===\n")
    for task in tasks:
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(limit=30, file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


def _warn(nodeid: str) -> None:
    loop = _loop
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(_dump_tasks, nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    timeout = float(item.config.getini("timeout") or 0)
    timer = None
    if timeout > WARN_BEFORE_TIMEOUT_S:
        timer = threading.Timer(timeout - WARN_BEFORE_TIMEOUT_S, _warn, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
