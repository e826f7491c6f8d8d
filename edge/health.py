"""The pipeline's circuit breakers: a thin client of the routing service's shared route health
(services/routing/health.py RouteHealth; docs/routing.md §5).

The pipeline talks to them through four coroutines (`order`, `succeeded`, `failed`, `record`). An
endpoint (provider name + base URL) that fails `failure_threshold` times in a row with a retriable
error (connect error, timeout, 429, 5xx), or whose error rate runs high, is *open* for a pause:
routing moves it behind the healthy candidates, so requests stop paying its timeout, yet it stays a
last resort. After the pause exactly one request, in any process, tries it again in its place
(half-open); a success closes it, a failure opens it for another pause. The state lives in Redis,
shared by every worker and replica. Without Redis (unit tests of the pipeline) there are no breakers.
"""

from __future__ import annotations

from aggregator.routing.v1 import route_pb2
from services.routing.health import Health, RouteHealth, endpoint_id


class RouteHealthClient:
    """Orders candidates by their breakers and reports each attempt's outcome."""

    def __init__(self, health: RouteHealth | None = None) -> None:
        self.health = health

    async def order(self, candidates: list[route_pb2.RouteCandidate]) -> list[route_pb2.RouteCandidate]:
        """The candidates to try, in order: open breakers last (docs/routing.md §5)."""
        if self.health is None or not candidates:
            return candidates
        return await self.health.order(candidates)

    def known(self, candidate: route_pb2.RouteCandidate) -> Health | None:
        """The candidate's endpoint's health as `order` last read it (figures, the distribution of
        times to first token for hedging); no Redis round trip. None without route health."""
        return self.health.known(endpoint_id(candidate)) if self.health is not None else None

    async def succeeded(self, candidate: route_pb2.RouteCandidate) -> None:
        """An attempt's first event arrived."""
        if self.health is not None:
            await self.health.succeeded(candidate)

    async def failed(self, candidate: route_pb2.RouteCandidate) -> None:
        """A retriable failure before an attempt's first event."""
        if self.health is not None:
            await self.health.failed(candidate)

    async def record(self, candidate: route_pb2.RouteCandidate, *, ok: bool, ttft_s: float | None,
                     output_tokens: int, duration_s: float) -> None:
        """One attempt's outcome once it ended (time to first token, tokens generated, how long it
        ran): buffered, written with the others once a second (measured routing, docs/routing.md §4)."""
        if self.health is not None:
            self.health.record(candidate, ok=ok, ttft_s=ttft_s, output_tokens=output_tokens,
                               duration_s=duration_s)


CircuitBreakers = RouteHealthClient  # the seam's name (edge/pipeline.py)
