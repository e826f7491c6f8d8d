"""Readiness probes of the data stores, cached (docs/reference.md §4, `/readyz`).

Load balancers and Kubernetes poll `/readyz` often, from many places, and every worker answers;
probing PostgreSQL, Redis and NATS on each call would turn that polling into store load. So each
probe runs at most once per `ttl_s` in a process: its outcome (success or the failure) is kept that
long, and callers arriving while it runs wait for the same run. Each run sets the store's
`aggregator_store_up` gauge and observes its duration (docs/observability.md §1); `/metrics` on
the ops port asks the probes first, so every scrape sees a state at most `ttl_s` old.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from services.core import telemetry

Probe = Callable[[], Awaitable[Any]]
PROBE_TTL_S = 1.0
PROBE_TIMEOUT_S = 2.0


class CachedProbe:
    """One store's probe, run at most once per `ttl_s`; raises ConnectionError while the last run
    failed."""

    def __init__(self, probe: Probe, *, ttl_s: float = PROBE_TTL_S, timeout_s: float = PROBE_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic, store: str = "") -> None:
        """`store`: the name the metrics give the store (no metrics without one)."""
        self._probe = probe
        self._store = store
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._done_at = -float("inf")
        self._failed = False
        self._running: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._probe(), self._timeout_s)
            self._failed = False
        except Exception:  # noqa: BLE001 - any failure means "not ready", kept for ttl_s
            self._failed = True
        finally:
            self._done_at = self._clock()
            self._running = None
            if self._store:
                telemetry.STORE_PROBE.labels(self._store).observe(time.perf_counter() - started)
                telemetry.STORE_UP.labels(self._store).set(0 if self._failed else 1)

    async def __call__(self) -> None:
        if self._clock() - self._done_at >= self._ttl_s:
            if self._running is None:
                self._running = asyncio.get_running_loop().create_task(self._run())
            # shield: a caller that gives up (its own timeout) does not cancel the shared run.
            await asyncio.shield(self._running)
        if self._failed:
            raise ConnectionError("the store did not answer its last probe")


def cached_probes(probes: Mapping[str, Probe], **options: Any) -> dict[str, Probe]:
    """Every probe wrapped in a CachedProbe (`ttl_s`, `timeout_s`, `clock` as CachedProbe takes)."""
    return {name: CachedProbe(probe, store=name, **options) for name, probe in probes.items()}


async def failing(probes: Mapping[str, Probe], timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """The names of the probes that fail (or take over `timeout_s`), in order."""
    names = list(probes)
    results = await asyncio.gather(
        *(asyncio.wait_for(probes[name](), timeout_s) for name in names), return_exceptions=True
    )
    return [name for name, result in zip(names, results, strict=True) if isinstance(result, BaseException)]
