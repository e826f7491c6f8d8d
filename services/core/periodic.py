"""A background job run every so often in a service process: the request log's retention
(services/analytics/retention.py), the monthly invoices (services/billing/invoicing.py) and the
budget holds' reconciliation (services/limits/reconcile.py).

A run that fails (a store away) is logged in one line and the next run catches up; `stop()`
cancels the job between or during runs, which every job tolerates (each run is one or more
short transactions, idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)


class PeriodicJob:
    """Subclasses define `run_once`; the job runs it at start (or first after `every_s` when
    `wait_first`) and then every `every_s`."""

    name = "job"

    def __init__(self, every_s: float, *, wait_first: bool = False) -> None:
        self._every_s = every_s
        self._wait_first = wait_first
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> Any:
        raise NotImplementedError

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        if self._wait_first:
            await asyncio.sleep(self._every_s)
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 - a store away: the next run catches up
                log.warning("%s postponed: %s", self.name, type(exc).__name__)
            await asyncio.sleep(self._every_s)
