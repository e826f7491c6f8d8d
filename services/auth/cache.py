"""The in-process authentication cache: key HMAC → AuthRecord (docs/architecture.md §2.3).

A request for a cached key touches no database row. Staleness is bounded three ways:

* Revocation and creation are pushed: every process subscribes to `auth.keys.invalidate`
  (invalidation.py) and drops the entry when an event arrives, well within 2 s.
* Positive entries live `ttl_s` (60 s), a safety net for events missed while NATS was down or
  the connection was being re-established: with NATS unavailable a revoked key may keep working in
  other processes for up to `ttl_s`, never longer. The revoking process drops its own entry at once.
* Unknown keys get a short negative entry (`negative_ttl_s`, 5 s) so a flood of one bad key does
  not reach PostgreSQL on every request; creating a key clears any negative entry for its hash
  (locally and through the same event), so a new key works at once.

Concurrent misses for one hash share a single lookup (single-flight). An invalidation that lands
while a lookup is in flight stops that lookup's answer from being cached, so a revocation cannot
be overwritten by a read that started before it. Both maps are bounded (least recently used out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from services.auth import invalidation
from services.auth.records import AuthRecord
from services.core.nats import unsubscribe_quietly

log = logging.getLogger(__name__)

Loader = Callable[[str], Awaitable[AuthRecord | None]]


class PrincipalCache:
    """Caches the live key behind each HMAC, or its absence, for one process."""

    def __init__(self, loader: Loader, *, ttl_s: float = 60.0, negative_ttl_s: float = 5.0,
                 max_entries: int = 100_000, max_negative_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._loader = loader
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_entries = max_entries
        self._max_negative_entries = max_negative_entries
        self._clock = clock
        self._positive: OrderedDict[str, tuple[float, AuthRecord]] = OrderedDict()
        # Kept apart so a flood of distinct bad keys cannot evict the good ones.
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[AuthRecord | None]] = {}
        self._generation = 0
        self._subscription: Any = None

    def __len__(self) -> int:
        return len(self._positive) + len(self._negative)

    async def get(self, key_hash: str) -> AuthRecord | None:
        """The live key with this HMAC (possibly expired: the caller checks), or None if unknown."""
        now = self._clock()
        hit = self._positive.get(key_hash)
        if hit is not None:
            if hit[0] > now:
                self._positive.move_to_end(key_hash)
                return hit[1]
            del self._positive[key_hash]
        miss_until = self._negative.get(key_hash)
        if miss_until is not None:
            if miss_until > now:
                return None
            del self._negative[key_hash]
        task = self._inflight.get(key_hash)
        if task is None:
            task = asyncio.ensure_future(self._load(key_hash))
            task.add_done_callback(_retrieve)
            self._inflight[key_hash] = task
        # Shielded: one waiter giving up (client gone) must not cancel the others' lookup.
        return await asyncio.shield(task)

    async def _load(self, key_hash: str) -> AuthRecord | None:
        generation = self._generation
        try:
            record = await self._loader(key_hash)
        finally:
            if self._inflight.get(key_hash) is asyncio.current_task():
                del self._inflight[key_hash]
        if generation == self._generation:
            self._store(key_hash, record)
        return record

    def _store(self, key_hash: str, record: AuthRecord | None) -> None:
        now = self._clock()
        if record is None:
            self._negative[key_hash] = now + self._negative_ttl_s
            self._negative.move_to_end(key_hash)
            while len(self._negative) > self._max_negative_entries:
                self._negative.popitem(last=False)
        else:
            self._positive[key_hash] = (now + self._ttl_s, record)
            self._positive.move_to_end(key_hash)
            while len(self._positive) > self._max_entries:
                self._positive.popitem(last=False)

    def invalidate(self, key_hash: str = "", key_id: str = "") -> None:
        """Drops what is known about a key (by HMAC, else by id), positive or negative, and keeps
        any lookup already in flight from caching its answer."""
        self._generation += 1
        if key_hash:
            self._positive.pop(key_hash, None)
            self._negative.pop(key_hash, None)
            self._inflight.pop(key_hash, None)
        elif key_id:
            stale = [h for h, (_, r) in self._positive.items() if r.principal.api_key_id == key_id]
            for h in stale:
                del self._positive[h]

    def clear(self) -> None:
        """Forgets everything, e.g. after a NATS reconnect during which events may have been missed."""
        self._generation += 1
        self._positive.clear()
        self._negative.clear()
        self._inflight.clear()

    async def subscribe(self, nc: Any) -> None:
        """Listens for invalidation events on `nc` until close(); returns once the server has the
        subscription."""
        self._subscription = await nc.subscribe(invalidation.SUBJECT, cb=self._on_event)
        await nc.flush(timeout=invalidation.FLUSH_TIMEOUT_S * 5)

    async def _on_event(self, msg: Any) -> None:
        event = invalidation.decode(msg.data)
        if event is not None:
            self.invalidate(event.key_hash, event.api_key_id)

    async def close(self) -> None:
        """Stops listening (the NATS connection itself belongs to the caller)."""
        subscription, self._subscription = self._subscription, None
        await unsubscribe_quietly(subscription)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # A lookup whose waiters all went away must not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()
