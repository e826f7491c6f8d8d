"""Which services a process hosts and where the others live (docs/architecture.md §2.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.core import telemetry
from services.core.config import SERVICE_NAMES, ConfigError
from services.core.inproc import InProcessChannel
from services.core.limits import MAX_GRPC_MESSAGE_BYTES
from services.core.service_token import token_interceptors

CHANNEL_OPTIONS = [
    # A service's answer may hold a whole upstream answer (docs/edge.md, "Size limits").
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),
]


def parse_services(text: str) -> frozenset[str]:
    """`all` or a comma-separated subset of SERVICE_NAMES."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    if names == {"all"}:
        return frozenset(SERVICE_NAMES)
    unknown = names - set(SERVICE_NAMES)
    if unknown or not names:
        raise ConfigError(
            f"unknown services: {', '.join(sorted(unknown)) or '(none)'}; "
            f"choose from all, {', '.join(SERVICE_NAMES)}"
        )
    return frozenset(names)


def parse_remotes(items: list[str]) -> dict[str, str]:
    """`name=host:port` pairs naming where non-local services live."""
    remotes = {}
    for item in items:
        name, sep, address = item.partition("=")
        if not sep or name not in SERVICE_NAMES or not address:
            raise ConfigError(f"--remote expects name=host:port with a known service name, got {item!r}")
        remotes[name] = address
    return remotes


@dataclass
class Topology:
    """Channels to every service: in-process for local ones, gRPC for the rest. Remote channels
    send the deployment's service token, which internal services require (service_token.py)."""

    local: frozenset[str]
    remotes: dict[str, str]
    service_token: str
    inproc: InProcessChannel = field(default_factory=InProcessChannel)
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def channel_for(self, service: str) -> Any:
        if service in self.local:
            return self.inproc
        address = self.remotes.get(service)
        if address is None:
            raise ConfigError(f"service {service!r} is neither local nor given with --remote")
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(
                address,
                options=CHANNEL_OPTIONS,
                interceptors=[*token_interceptors(self.service_token),
                              *(aio_client_interceptors() if telemetry.tracing_on() else [])],
            )
        return self._channels[address]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
