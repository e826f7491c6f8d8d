"""A background job run at start and every `every_s` seconds (the retention job, the analytics
rollup): a failed run is logged and the next one catches up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

log = logging.getLogger(__name__)


class PeriodicJob:
    """Calls `run(now)` at start and every `every_s`, in the background, until stopped."""

    def __init__(self, name: str, run: Callable[[datetime], Awaitable[object]], every_s: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._name = name
        self._run = run
        self._every_s = every_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                await self._run(self._clock())
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: the next run catches up
                log.warning("%s postponed: %s", self._name, type(exc).__name__)
            await asyncio.sleep(self._every_s)
