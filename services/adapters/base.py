"""The one interface every provider adapter implements (two methods, as in TensorZero).

An adapter translates our typed request into one provider's wire format, calls it through the
shared HttpClient, and translates the answer (or the failure) back. It reads no configuration
and knows nothing of keys, limits or billing: everything it needs arrives in the request.

Optional capabilities: an adapter whose provider has the endpoint also defines

    def complete(self, call: adapter_service_pb2.CompleteRequest,
                 ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]
        Legacy text completions (`/v1/completions`), evented exactly like `chat`: bodies are
        OpenAI `text_completion` objects or stream chunks, stamped like chat's, `has_content`
        when a choice carries `text`, usage on the event that reports it.

    async def image(self, call: adapter_service_pb2.ImageRequest) -> adapter_service_pb2.ImageResponse
        Image generation, edit or variation (`call.generation` or `call.upload`): the OpenAI
        images JSON with `provider` added, usage when the model reports it, the image count.

They are not part of `ProviderAdapter` (most providers have neither). The servicer looks them up
on the adapter and, when absent, fails with UNSUPPORTED_PARAMETER ("Provider kind '<kind>' does
not support completions."), so routing moves on to the next candidate. Today only the OpenAI
adapter (`openai`, `openai_compatible`) defines them.
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
    default_timeout_s: float = 120.0  # the idle timeout: silence allowed between two reads
    connect_timeout_s: float = 10.0
    # Providers that refuse `stream_options` (config `stream_options: false`): never sent to them.
    no_stream_options: frozenset[str] = frozenset()


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
