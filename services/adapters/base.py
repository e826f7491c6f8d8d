"""The one interface every provider adapter implements (two methods, as in TensorZero).

An adapter translates our typed request into one provider's wire format, calls it through the
shared HttpClient, and translates the answer (or the failure) back. It reads no configuration
and knows nothing of keys, limits or billing: everything it needs arrives in the request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from aggregator.adapter.v1 import adapter_service_pb2
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient


@dataclass(frozen=True, slots=True)
class AdapterDeps:
    """What every adapter is built from: the process's HTTP client and credential resolver."""

    http: HttpClient
    credentials: CredentialResolver
    default_timeout_s: float = 120.0


class ProviderAdapter(Protocol):
    """Calls one kind of provider."""

    def chat(self, call: adapter_service_pb2.ChatRequest,
             ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """One event per upstream chunk as it arrives (`call.request.stream`), else one event with
        the whole completion. Closing the iterator early closes the upstream request."""
        ...

    async def embed(self, call: adapter_service_pb2.EmbedRequest) -> adapter_service_pb2.EmbedResponse:
        """The embeddings of `call.request`."""
        ...
