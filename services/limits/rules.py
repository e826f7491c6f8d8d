"""The rule book: which rate limits apply to a request, answered from memory (docs/architecture.md
§2.3: nothing slow on the hot path).

`RuleBook.for_request` reads, once per organization and then for `ttl_s`, every enabled rule of
that organization plus every `model` and `global` rule, in one query; a warm request reads no
database. A change of the rules (rule_manager.py) is published on the core NATS subject
`limits.rules.changed` (`publish_change`); every process's rule book subscribed to it forgets
what it cached when the message arrives, so a change applies everywhere within 2 seconds. Core
NATS is at-most-once: a process that misses the message (disconnected) still sees the change
within `ttl_s`, and forgets everything on a NATS reconnect (call `invalidate`). This is the
pattern of services/auth/sessions.py and services/auth/invalidation.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.core.nats import unsubscribe_quietly
from services.limits import rule_repository as store
from services.limits.rule_repository import RuleRow

log = logging.getLogger(__name__)

SUBJECT = "limits.rules.changed"
FLUSH_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One limit a request is held to, from a rule or from a key's own columns."""

    scope: str            # "key" | "user" | "organization" | "model" | "global"
    target: str           # the id the counter is kept for ("" for global)
    model: str | None     # None: every model
    window_s: int         # 60, 3600 or 86400
    max_requests: int | None
    max_tokens: int | None
    max_cost_usd: Decimal | None
    rule_id: str | None   # None for limits that come from a key's own columns


def spec_of(row: RuleRow) -> LimitSpec:
    return LimitSpec(scope=row.scope, target=row.target_id, model=row.model, window_s=row.window_seconds,
                     max_requests=row.max_requests, max_tokens=row.max_tokens, max_cost_usd=row.max_cost_usd,
                     rule_id=row.id)


def applies(spec: LimitSpec, organization_id: str, api_key_id: str, user_id: str, model: str) -> bool:
    """Whether a rule of the request's organization (or of none) holds this request."""
    if spec.model is not None and spec.model != model:
        return False
    if spec.scope == "key":
        return bool(api_key_id) and spec.target == api_key_id
    if spec.scope == "user":
        return bool(user_id) and spec.target == user_id
    if spec.scope == "organization":
        return spec.target == organization_id
    if spec.scope == "model":
        return spec.target == model
    return spec.scope == "global"


class RuleBook:
    """Per process: the enabled rules of each organization seen, kept `ttl_s` (at most
    `max_organizations` of them, least recently used first out) and dropped on every change."""

    def __init__(self, pool: Any, *, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 max_organizations: int = 10_000) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_organizations = max_organizations
        # organization id -> (until when it holds, its rules and those spanning every organization)
        self._entries: OrderedDict[str, tuple[float, tuple[LimitSpec, ...]]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[tuple[LimitSpec, ...]]] = {}
        self._generation = 0
        self._subscription: Any = None

    async def for_request(self, organization_id: str, api_key_id: str, user_id: str,
                          model: str) -> list[LimitSpec]:
        """Every enabled rule that applies: key rules of this key, user rules of this user,
        organization rules of this organization, model rules whose target is `model`, global
        rules (a rule with `model` set applies only to that model)."""
        rules = await self._rules_of(organization_id)
        return [spec for spec in rules if applies(spec, organization_id, api_key_id, user_id, model)]

    async def _rules_of(self, organization_id: str) -> tuple[LimitSpec, ...]:
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

    def _loaded(self, organization_id: str, done: asyncio.Future[tuple[LimitSpec, ...]]) -> None:
        if self._loading.get(organization_id) is done:
            del self._loading[organization_id]
        if not done.cancelled() and done.exception() is not None:
            log.debug("loading the rate-limit rules of %s failed", organization_id)

    async def _load(self, organization_id: str) -> tuple[LimitSpec, ...]:
        generation = self._generation
        specs = tuple(spec_of(row) for row in await store.applicable_rules(self._pool, organization_id))
        # Rules read before a change arrived answer this request but are not kept.
        if generation == self._generation:
            self._entries[organization_id] = (self._clock() + self._ttl_s, specs)
            self._entries.move_to_end(organization_id)
            while len(self._entries) > self._max_organizations:
                self._entries.popitem(last=False)
        return specs

    def invalidate(self) -> None:
        """Forgets every organization's rules: a rule changed, or NATS reconnected (changes may
        have been missed)."""
        self._generation += 1
        self._entries.clear()
        self._loading.clear()  # a query under way may predate the change: the next request asks again

    async def subscribe(self, nc: Any) -> None:
        """Invalidates on every message on SUBJECT."""
        self._subscription = await nc.subscribe(SUBJECT, cb=self._on_event)
        await nc.flush(timeout=FLUSH_TIMEOUT_S * 5)

    async def _on_event(self, msg: Any) -> None:
        del msg  # any message means "the rules changed"
        self.invalidate()

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        await unsubscribe_quietly(subscription)


async def publish_change(nc: Any | None) -> bool:
    """Tells every process that the rules changed; False (logged, never raised) when NATS is absent
    or unreachable: the change is stored, and other processes see it within their `ttl_s`."""
    if nc is None:
        return False
    try:
        await nc.publish(SUBJECT, b"")
        # Flushing makes "published" mean "handed to the server", so the 2 s promise holds.
        await nc.flush(timeout=FLUSH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any NATS failure degrades to TTL-bounded staleness
        log.warning("could not publish a rate-limit rule change: %s", type(exc).__name__)
        return False
    return True
