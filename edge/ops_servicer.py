"""OpsService: liveness, readiness (the data stores answer) and Prometheus metrics.

On Envoy's public listener `/metrics` needs an admin API key (`metrics_guard`); Prometheus scrapes
the ops port instead (edge/ops_port.py, docs/reference.md §2)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from google.api import httpbody_pb2

from aggregator.ops.v1 import ops_service_pb2 as pb
from aggregator.ops.v1 import ops_service_pb2_grpc
from edge.readiness import failing
from services.auth.permissions import ADMIN_PLATFORM, PUBLIC, requires
from services.core import telemetry
from services.core.errors import GatewayError, Reason
from services.core.rpc import rpc_method

Probe = Callable[[], Awaitable[Any]]


class OpsServicer(ops_service_pb2_grpc.OpsServiceServicer):
    """Operational endpoints: liveness and readiness for anyone, metrics for admins."""

    def __init__(self, probes: dict[str, Probe], timeout_s: float = 2.0,
                 metrics_guard: Callable[[Any], Awaitable[None]] | None = None) -> None:
        """`probes`: the stores' readiness probes (edge/readiness.py caches them).
        `metrics_guard(context)` raises unless the caller may read metrics; None lets anyone."""
        self._probes = probes
        self._timeout_s = timeout_s
        self._metrics_guard = metrics_guard

    @rpc_method
    @requires(PUBLIC)
    async def GetHealthz(self, request: pb.GetHealthzRequest, context: Any) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type="application/json", data=b'{"status":"ok"}')

    @rpc_method
    @requires(PUBLIC)
    async def GetReadyz(self, request: pb.GetReadyzRequest, context: Any) -> httpbody_pb2.HttpBody:
        names = list(self._probes)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._probes[n](), self._timeout_s) for n in names), return_exceptions=True
        )
        failing = [n for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
        if failing:
            raise GatewayError(Reason.UNAVAILABLE, f"Not ready: {', '.join(failing)} unreachable.")
        return httpbody_pb2.HttpBody(content_type="application/json", data=b'{"status":"ready"}')

    @rpc_method
    @requires(ADMIN_PLATFORM)  # the series span every organization (docs/reference.md §4 "Permissions")
    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Any) -> httpbody_pb2.HttpBody:
        """Prometheus text of every worker, for an admin API key."""
        if self._metrics_guard is not None:
            await self._metrics_guard(context)
        await failing(self._probes, self._timeout_s)  # aggregator_store_up fresh at each scrape
        return httpbody_pb2.HttpBody(
            content_type="text/plain; version=0.0.4; charset=utf-8", data=telemetry.render_metrics()
        )
