"""What each organization's requests are held to (its rate-limit rules, its quotas), answered from
memory: read once per organization and then kept `ttl_s`, dropped on every change announced on a
core NATS subject, so a warm request reads no database and a change applies everywhere within 2 s
(docs/architecture.md §2.3). Core NATS is at-most-once: a process that misses the message still
sees the change within `ttl_s`, and forgets everything on a NATS reconnect (`invalidate`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from services.core.nats import unsubscribe_quietly

log = logging.getLogger(__name__)

T = TypeVar("T")
FLUSH_TIMEOUT_S = 1.0


class OrganizationBook(Generic[T]):
    """Per process: `load(organization id)` of each organization seen, kept `ttl_s` (at most
    `max_organizations`, least recently used first out) and dropped on a message on `subject`."""

    def __init__(self, load: Callable[[str], Awaitable[T]], subject: str, *, ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, max_organizations: int = 10_000) -> None:
        self._load_one = load
        self._subject = subject
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_organizations = max_organizations
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()  # id -> (until when, value)
        self._loading: dict[str, asyncio.Future[T]] = {}
        self._generation = 0
        self._subscription: Any = None

    async def of(self, organization_id: str) -> T:
        hit = self._entries.get(organization_id)
        if hit is not None and hit[0] > self._clock():
            self._entries.move_to_end(organization_id)
            return hit[1]
        # Concurrent cold requests of one organization share one query.
        pending = self._loading.get(organization_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(organization_id))
            self._loading[organization_id] = pending
            pending.add_done_callback(lambda done: self._loaded(organization_id, done))
        # Shielded: a cancelled request does not cancel the query others wait for.
        return await asyncio.shield(pending)

    def _loaded(self, organization_id: str, done: asyncio.Future[T]) -> None:
        if self._loading.get(organization_id) is done:
            del self._loading[organization_id]
        if not done.cancelled() and done.exception() is not None:
            log.debug("loading %s of %s failed", self._subject, organization_id)

    async def _load(self, organization_id: str) -> T:
        generation = self._generation
        value = await self._load_one(organization_id)
        # Read before a change arrived: it answers this request but is not kept.
        if generation == self._generation:
            self._entries[organization_id] = (self._clock() + self._ttl_s, value)
            self._entries.move_to_end(organization_id)
            while len(self._entries) > self._max_organizations:
                self._entries.popitem(last=False)
        return value

    def invalidate(self) -> None:
        """Forgets every organization: something changed, or NATS reconnected (changes may have
        been missed)."""
        self._generation += 1
        self._entries.clear()
        self._loading.clear()  # a query under way may predate the change: the next request asks again

    async def subscribe(self, nc: Any) -> None:
        """Invalidates on every message on the subject."""
        self._subscription = await nc.subscribe(self._subject, cb=self._on_event)
        await nc.flush(timeout=FLUSH_TIMEOUT_S * 5)

    async def _on_event(self, msg: Any) -> None:
        del msg  # any message means "it changed"
        self.invalidate()

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        await unsubscribe_quietly(subscription)


async def publish_change(nc: Any | None, subject: str) -> bool:
    """Tells every process that something on `subject` changed; False (logged, never raised) when
    NATS is absent or unreachable: the change is stored, and other processes see it within their
    `ttl_s`."""
    if nc is None:
        return False
    try:
        await nc.publish(subject, b"")
        # Flushing makes "published" mean "handed to the server", so the 2 s promise holds.
        await nc.flush(timeout=FLUSH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any NATS failure degrades to TTL-bounded staleness
        log.warning("could not announce a change on %s: %s", subject, type(exc).__name__)
        return False
    return True
