"""Retention (docs/architecture.md §4, "Retention"): the request log's monthly partitions are
created ahead and dropped whole once past their retention, by a job each analytics process runs
(at start and every EVERY_S; the SQL functions serialise concurrent runs per table).

* `api_requests`, `api_responses`: `request_logs_days` (90 by default);
* `request_analytics`: `analytics_days` (2 years);
* `audit_log` (not partitioned): rows older than `audit_days` (7 years) are deleted in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.core.periodic import PeriodicJob

log = logging.getLogger(__name__)

MONTHS_AHEAD = 3
EVERY_S = 6 * 3600
AUDIT_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each kind of record is kept, in days (the config file's `retention`)."""

    request_logs_days: int = 90
    analytics_days: int = 730
    audit_days: int = 7 * 365

    def tables(self) -> dict[str, int]:
        return {"api_requests": self.request_logs_days, "api_responses": self.request_logs_days,
                "request_analytics": self.analytics_days}


@dataclass(frozen=True, slots=True)
class Maintained:
    created: int
    dropped: int
    audit_deleted: int


async def maintain(pool: Any, retention: Retention, now: datetime) -> Maintained:
    """Creates the partitions of `now`'s month and MONTHS_AHEAD more, drops the months that ended
    before each table's retention, and deletes audit rows past theirs."""
    created = dropped = 0
    async with pool.acquire() as conn:
        for table, days in retention.tables().items():
            created += await conn.fetchval("SELECT ensure_monthly_partitions_from($1, $2, $3)", table, now,
                                           MONTHS_AHEAD)
            dropped += await conn.fetchval("SELECT drop_monthly_partitions_before($1, $2)", table,
                                           now - timedelta(days=days))
        deleted = 0
        while True:
            status = await conn.execute(
                "DELETE FROM audit_log WHERE id IN "
                "(SELECT id FROM audit_log WHERE created_at < $1 LIMIT $2)",
                now - timedelta(days=retention.audit_days), AUDIT_BATCH)
            count = int(status.split()[-1])
            deleted += count
            if count < AUDIT_BATCH:
                break
    if created or dropped or deleted:
        log.info("retention: %d partitions created, %d dropped, %d audit rows deleted", created, dropped,
                 deleted)
    return Maintained(created, dropped, deleted)


class RetentionJob(PeriodicJob):
    """Runs `maintain` at start and every `every_s`, in the background."""

    def __init__(self, pool: Any, retention: Retention, *, every_s: float = EVERY_S,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__("retention", lambda now: maintain(pool, retention, now), every_s, clock)
