"""Reconciling expired holds with the usage ledger (docs/limits.md, "Budgets").

A hold whose worker died before settling counts as spent at its worst case when it expires, and
the admission script notes it in the registry `{rl}:expired`. Every few seconds each edge process
looks the noted requests up in the ledger (`request_analytics`, written from stream USAGE: a dead
worker's usage events are replayed from its outbox when it comes back), corrects the budget from
the worst case to the true amount, once (a script deletes the note first; a worker that was only
slow may have settled it already), and adds the true amount to `rate_limit_tracking` (where the
dead worker's settlement never went). A note whose request never reaches the ledger is dropped
after GIVE_UP_S: its worst case stays counted.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core.periodic import PeriodicJob
from services.limits import scripts
from services.limits.budgets import COST_UNIT, REQUESTS_UNIT, TOKENS_UNIT, SpendStore, unit_amount

log = logging.getLogger(__name__)

EVERY_S = 10.0
GIVE_UP_S = 3600.0
BATCH = 200


class Reconciler(PeriodicJob):
    """Corrects expired holds from the ledger, in the background (first after `every_s`)."""

    name = "hold-reconciler"

    def __init__(self, redis: aioredis.Redis, pool: Any, *, every_s: float = EVERY_S) -> None:
        super().__init__(every_s, wait_first=True)
        self._redis = redis
        self._pool = pool
        self._reconcile = redis.register_script(scripts.RECONCILE)

    async def run_once(self) -> int:
        """One pass over (at most BATCH) notes; answers how many holds it corrected."""
        notes: dict[str, str] = {}
        async for field, value in self._redis.hscan_iter(scripts.EXPIRED, count=BATCH):
            notes[field.decode()] = value.decode()
            if len(notes) >= BATCH:
                break
        if not notes:
            return 0
        parsed = {}
        for field, value in notes.items():
            budget_key, _, member = field.partition("|")
            request_id, unit, hold_text = member.rsplit(":", 2)
            generation, _, noted_text = value.partition("|")
            parsed[field] = (budget_key, request_id, unit, int(hold_text), generation, int(noted_text or 0))
        rows = await self._pool.fetch(
            "SELECT request_id, organization_id::text AS org, api_key_id::text AS key, cost_usd, "
            "prompt_tokens + completion_tokens AS tokens FROM request_analytics "
            "WHERE request_id = ANY($1::text[])",
            list({p[1] for p in parsed.values()}))
        ledger = {row["request_id"]: row for row in rows}
        corrected = 0
        for field, (budget_key, request_id, unit, hold, generation, noted_ms) in parsed.items():
            row = ledger.get(request_id)
            if row is None:
                if time.time() * 1000 - noted_ms > GIVE_UP_S * 1000:
                    await self._redis.hdel(scripts.EXPIRED, field)  # the worst case stays counted
                continue
            true = unit_amount(unit, Decimal(row["cost_usd"]), int(row["tokens"]))
            try:
                done = await self._reconcile(keys=[budget_key, scripts.EXPIRED],
                                             args=[field, generation, hold, true])
            except RedisError as exc:
                log.warning("hold reconciliation postponed: %s", type(exc).__name__)
                return corrected
            if done:
                corrected += 1
                await self._persist(budget_key, row, unit)
        return corrected

    async def _persist(self, budget_key: str, row: Any, unit: str) -> None:
        """Adds the request's true amount to the period row its dead worker never settled."""
        # {rl}:budget:<key|org>:<id>:<unit>:<period>:<start>
        parts = budget_key.split(":")
        scope, period, start = parts[2], parts[5], datetime.fromtimestamp(int(parts[6]), UTC)
        await SpendStore(self._pool).add_row(
            row["org"], row["key"] if scope == "key" else "", period, start,
            requests=1 if unit == REQUESTS_UNIT else 0,
            tokens=int(row["tokens"]) if unit == TOKENS_UNIT else 0,
            cost=Decimal(row["cost_usd"]) if unit == COST_UNIT else Decimal(0))
