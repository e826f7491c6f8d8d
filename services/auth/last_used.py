"""Records `api_keys.last_used_at` off the hot path: at most once per key per minute per process,
written in batches by one background task, never awaited by a request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

Writer = Callable[[Sequence[str]], Awaitable[None]]


class LastUsedRecorder:
    """Collects used key ids and writes them with `writer` (one UPDATE per batch)."""

    def __init__(self, writer: Writer, *, min_interval_s: float = 60.0, max_tracked: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._writer = writer
        self._min_interval_s = min_interval_s
        self._max_tracked = max_tracked
        self._clock = clock
        self._last: dict[str, float] = {}
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def touch(self, key_id: str) -> None:
        """Notes a use of `key_id`; cheap, synchronous, never fails the request."""
        now = self._clock()
        last = self._last.get(key_id)
        if last is not None and now - last < self._min_interval_s:
            return
        if len(self._last) >= self._max_tracked:
            self._forget_older_than(now - self._min_interval_s)
        self._last[key_id] = now
        self._pending.add(key_id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    def _forget_older_than(self, horizon: float) -> None:
        self._last = {k: t for k, t in self._last.items() if t >= horizon}

    async def _drain(self) -> None:
        # Uses arriving while a batch is being written join the next batch.
        while self._pending:
            batch, self._pending = sorted(self._pending), set()
            try:
                await self._writer(batch)
            except Exception as exc:  # noqa: BLE001 - bookkeeping only; the request already succeeded
                log.warning("could not record last_used_at for %d keys: %s", len(batch), type(exc).__name__)

    async def flush(self) -> None:
        """Waits until every use noted so far is written (or has failed)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        await self.flush()
