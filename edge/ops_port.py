"""The ops port (`edge.ops_port`, docs/reference.md §2): `/metrics`, `/healthz` and `/readyz` for
Prometheus and probes, without credentials, on the services' private address.

On the public listener `/metrics` needs an admin API key (`admin_only`), since the series tell
anyone who can read them which models, providers and volumes the gateway serves. Prometheus gets
its unauthenticated copy here instead. Every worker serves this port (SO_REUSEPORT, like the gRPC
port) straight from its own process, without Envoy: a scrape answers even when the edge is in
trouble, and in multiprocess mode any worker reports all of them (services/core/telemetry.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from edge.readiness import Probe, failing
from services.core import telemetry
from services.core.errors import GatewayError, Reason

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def not_ready(names: list[str]) -> GatewayError:
    """The readiness failure `/readyz` answers on both ports."""
    return GatewayError(Reason.UNAVAILABLE, f"Not ready: {', '.join(names)} unreachable.")


class OpsPort:
    """An HTTP server for operations on `host:port` (0: an ephemeral port, in `port` once started)."""

    def __init__(self, probes: Mapping[str, Probe], *, host: str, port: int) -> None:
        self._probes = probes
        self._host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port, reuse_port=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        # The (cached) store probes first: aggregator_store_up is then fresh at every scrape.
        await failing(self._probes)
        return web.Response(body=telemetry.render_metrics(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        names = await failing(self._probes)
        if names:
            error = not_ready(names)
            return web.Response(status=error.http_status, body=error.to_json(),
                                content_type="application/json")
        return web.json_response({"status": "ready"})


def admin_only(authenticate: Any) -> Any:
    """The check of `/metrics` on the public listener: `authenticate(context)` answers the caller's
    Principal (or raises 401); only a key with the admin role passes."""

    async def check(context: Any) -> None:
        principal = await authenticate(context)
        if principal.role != "admin":
            raise GatewayError(Reason.PERMISSION_DENIED,
                               "Metrics on this port need an admin API key; Prometheus scrapes the ops "
                               "port (edge.ops_port) instead.")

    return check
