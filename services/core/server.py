"""The gRPC server every service process runs: servicers, health, reflection, telemetry, and a
graceful stop. One server per worker process; workers share the port with SO_REUSEPORT."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from services.core import telemetry
from services.core.limits import MAX_GRPC_MESSAGE_BYTES, MAX_RECEIVE_BYTES, MAX_REQUEST_BYTES
from services.core.server_guard import ServerGuard

log = logging.getLogger(__name__)

# What a service accepts: a client's request is held to max_request_bytes by ServerGuard, under
# the receive ceiling MAX_RECEIVE_BYTES (services/core/limits.py). What it sends may be a whole
# upstream answer (an adapter's EmbedResponse, a typed embedding for native gRPC clients).


@dataclass(frozen=True, slots=True)
class Registration:
    """One servicer and how to add it: its generated add function and full service name."""

    add_to_server: Callable[[Any, Any], None]
    servicer: Any
    service_name: str


class GrpcServer:
    """A grpc.aio server with health (per service and overall) and reflection."""

    def __init__(
        self,
        registrations: Iterable[Registration],
        *,
        host: str,
        port: int,
        service_token: str,
        private_host: str | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        """Listens on host:port (shared by every worker through SO_REUSEPORT) and, when
        `private_host` is given, also on an ephemeral port of its own (`private_port`): the kernel
        balances connections, not requests, so Envoy lists every worker's own port and spreads
        its few long-lived HTTP/2 connections itself. Internal services answer only calls that
        carry `service_token` (services/core/service_token.py), and a client's native gRPC request
        may be at most `max_request_bytes` (services/core/server_guard.py)."""
        self._registrations = tuple(registrations)
        self._server = grpc.aio.server(
            # The tracing interceptor only where spans are recorded: without a tracer provider it
            # would still wrap every call and every streamed message for nothing (docs/performance.md).
            interceptors=[ServerGuard(service_token, max_request_bytes),
                          *([aio_server_interceptor()] if telemetry.tracing_on() else [])],
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ],
        )
        self._health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {host}:{port}")
        self.private_port = self._server.add_insecure_port(f"{private_host}:0") if private_host else None

    async def start(self) -> None:
        names = [r.service_name for r in self._registrations]
        for registration in self._registrations:
            registration.add_to_server(registration.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self._server,
        )
        await self._server.start()
        for name in ("", *names):
            await self._set_health(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC server serving %s on port %d", ", ".join(names), self.port)

    async def _set_health(self, name: str, status: int) -> None:
        result = self._health.set(name, status)
        if hasattr(result, "__await__"):
            await result

    async def stop(self, grace_s: float) -> None:
        """Refuses new calls (health NOT_SERVING first), lets in-flight ones finish for `grace_s`."""
        for name in ("", *[r.service_name for r in self._registrations]):
            await self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace_s)

    async def wait(self) -> None:
        await self._server.wait_for_termination()
