"""Active health probes of provider endpoints (docs/routing.md §5).

A provider with `health_check` is probed with `GET {base_url}{path}` (by default its kind's free
model list, `HEALTH_PATH` of its adapter module, with the adapter's own fixed and auth headers),
so a dead endpoint opens its shared breaker before a user request pays for it, and a recovered one
closes it without risking a user request.

Every process hosting the routing service runs one Prober (a PeriodicJob ticking a few times per
shortest interval); across processes and replicas `SET routing:probe:<endpoint> 1 NX PX <interval
ms>` decides which one sends, so an endpoint gets one probe per interval. The outcome feeds the
breaker through RouteHealth: connect error, timeout, 5xx, 429, 401 and 403 are failures (the
script of a request's failure), a 2xx is a success that closes it at once, any other answer is
neither. Probes carry no user data and are not usage events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aggregator.routing.v1 import route_pb2
from services.adapters.base import AdapterDeps
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient
from services.adapters.registry import adapter_module
from services.adapters.upstream import UpstreamClient
from services.core import telemetry
from services.core.config import HealthCheck, ProviderConfig
from services.core.errors import GatewayError, Reason
from services.core.periodic import PeriodicJob
from services.routing.health import REDIS_ERRORS, RouteHealth, endpoint_key

log = logging.getLogger(__name__)
PROBE_PREFIX = "routing:probe:"
OK, FAILED, NEITHER = "ok", "failed", "neither"


@dataclass(frozen=True, slots=True)
class Target:
    """One probed endpoint: its provider, breaker id (`endpoint_id`'s form) and how to reach it."""

    provider: ProviderConfig
    check: HealthCheck
    endpoint: route_pb2.Endpoint
    upstream: UpstreamClient  # the provider kind's, as its adapter builds it
    path: str

    @property
    def endpoint_id(self) -> str:
        return endpoint_key(self.endpoint)


def targets(providers: Iterable[ProviderConfig], deps: AdapterDeps) -> list[Target]:
    """The providers that declare `health_check`, each with its adapter's UpstreamClient."""
    found = []
    for p in providers:
        module = adapter_module(p.kind)
        if p.health_check is None or module is None:
            continue
        endpoint = route_pb2.Endpoint(provider=p.name, kind=p.kind, base_url=p.base_url,
                                      api_key_env=p.api_key_env)
        found.append(Target(p, p.health_check, endpoint, module.create(deps, p.kind).upstream,
                            p.health_check.path or module.HEALTH_PATH))
    return found


def outcome(status: int) -> str:
    """A probe answer's effect on the breaker: 2xx ok; 5xx, 429, 401, 403 failed; others neither."""
    if 200 <= status < 300:
        return OK
    if status >= 500 or status in (429, 401, 403):
        return FAILED
    return NEITHER


class Prober(PeriodicJob):
    """Probes the configured endpoints, one probe per endpoint and interval across all processes."""

    name = "health probes"

    def __init__(self, redis: Any, health: RouteHealth, providers: Iterable[ProviderConfig], *,
                 key_envs: frozenset[str] | None = None, http: HttpClient | None = None) -> None:
        self._http = http if http is not None else HttpClient()
        deps = AdapterDeps(self._http, CredentialResolver(allowed_names=key_envs))
        self._targets = targets(providers, deps)
        # Ticks a few times per shortest interval: a probe follows its lock's expiry closely.
        shortest = min((t.check.interval_s for t in self._targets), default=1.0)
        super().__init__(min(1.0, shortest / 4))
        self._redis = redis
        self._health = health
        self._running: set[asyncio.Task[str]] = set()

    @property
    def active(self) -> bool:
        """Whether any provider declares a health check (no task otherwise)."""
        return bool(self._targets)

    async def run_once(self) -> None:
        """Starts the probes whose lock this process wins; a slow probe delays no other."""
        for target in self._targets:
            if any(t.get_name() == target.endpoint_id for t in self._running):
                continue
            try:
                won = await self._redis.set(PROBE_PREFIX + target.endpoint_id, "1", nx=True,
                                            px=int(target.check.interval_s * 1000))
            except REDIS_ERRORS:  # the breaker lives in Redis too: nothing to feed until it is back
                log.warning("health probes: Redis unavailable; probes paused")
                return
            if won:
                task = asyncio.create_task(self.probe(target), name=target.endpoint_id)
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def probe(self, target: Target) -> str:
        """Sends one probe and feeds its outcome to the shared breaker; answers the outcome."""
        provider = target.provider.name
        try:
            request = target.upstream.health_request(target.endpoint, target.path, target.check.timeout_s)
            async with self._http.open(request) as response:
                status = response.status
        except (GatewayError, OSError) as exc:  # transport failures arrive as GatewayError
            # Its key is not set: every request would fail too.
            if isinstance(exc, GatewayError) and exc.reason == Reason.UPSTREAM_AUTH_FAILED:
                log.warning("health probe of provider %s: its key is not configured", provider)
            result = FAILED
        else:
            result = outcome(status)
            if status in (401, 403):
                log.warning("health probe of provider %s: refused with %d (check its key)", provider, status)
        if result == FAILED:
            await self._health.endpoint_failed(target.endpoint_id)
        elif result == OK:
            await self._health.probe_succeeded(target.endpoint_id)
        else:
            log.info("health probe of provider %s answered %d: breaker unchanged", provider, status)
        if result != NEITHER:
            telemetry.PROVIDER_PROBES.labels(provider, result).inc()
        return result

    async def settle(self) -> None:
        """Waits for the probes in flight (their outcome written): a round's effect is then visible."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def stop(self) -> None:
        """Stops ticking, cancels the probes in flight and closes the probe's HTTP client."""
        await super().stop()
        for task in list(self._running):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping: its outcome is moot
                await task
        await self._http.close()
