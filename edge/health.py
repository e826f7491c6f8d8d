"""Per-process circuit breakers over upstream endpoints: "the first healthy candidate serves".

The pipeline talks to them through four coroutines (`order`, `succeeded`, `failed`, `record`),
the seam where breakers and measured figures shared by every process plug in.

An endpoint (provider name + base URL) that fails `failure_threshold` times in a row with a
retriable error (connect error, timeout, 429, 5xx) is *open* for `open_seconds`: routing moves it
behind the healthy candidates, so requests stop paying its timeout, yet it stays a last resort.
After the pause one request may try it again (half-open); a success closes it, a failure opens it
for another pause. The state is per process by nature, like Envoy's outlier detection: each
replica learns on its own, and nothing needs sharing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aggregator.routing.v1 import route_pb2
from services.core import telemetry


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float = 0.0


def endpoint_key(candidate: route_pb2.RouteCandidate) -> tuple[str, str]:
    return candidate.endpoint.provider, candidate.endpoint.base_url


class CircuitBreakers:
    """Consecutive-failure breakers, one per upstream endpoint."""

    def __init__(self, *, failure_threshold: int = 3, open_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._states: dict[tuple[str, str], _State] = {}

    def is_open(self, candidate: route_pb2.RouteCandidate) -> bool:
        state = self._states.get(endpoint_key(candidate))
        return state is not None and state.open_until > self._clock()

    async def order(self, candidates: list[route_pb2.RouteCandidate]) -> list[route_pb2.RouteCandidate]:
        """The candidates with open breakers moved last, each group in its configured order."""
        if not self._states:
            return candidates
        healthy = [c for c in candidates if not self.is_open(c)]
        if len(healthy) == len(candidates):
            return candidates
        return healthy + [c for c in candidates if self.is_open(c)]

    async def succeeded(self, candidate: route_pb2.RouteCandidate) -> None:
        key = endpoint_key(candidate)
        if key in self._states:
            del self._states[key]
            telemetry.PROVIDER_OPEN.labels(candidate.endpoint.provider).set(0)

    async def failed(self, candidate: route_pb2.RouteCandidate) -> None:
        state = self._states.setdefault(endpoint_key(candidate), _State())
        state.failures += 1
        if state.failures >= self._threshold:
            # Opened, or re-opened after a failed half-open trial.
            state.open_until = self._clock() + self._open_seconds
            telemetry.PROVIDER_OPEN.labels(candidate.endpoint.provider).set(1)

    async def record(self, candidate: route_pb2.RouteCandidate, *, ok: bool, ttft_s: float | None,
                     output_tokens: int, duration_s: float) -> None:
        """One attempt's outcome once it ended (time to first token, tokens generated, how long it
        ran): the figures measured routing feeds on. Nothing is kept per process yet."""
        del candidate, ok, ttft_s, output_tokens, duration_s
