"""AdapterService: a thin servicer over the registry (translate, call, return)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import aclosing
from typing import Any

from aggregator.adapter.v1 import adapter_service_pb2, adapter_service_pb2_grpc
from aggregator.routing.v1 import route_pb2
from services.adapters.credentials import CredentialResolver
from services.adapters.endpoints import ConfiguredEndpoints
from services.adapters.http import HttpClient, Transport
from services.adapters.registry import AdapterDeps, AdapterRegistry
from services.core.config import ProviderConfig
from services.core.errors import GatewayError, Reason
from services.core.rpc import rpc_method


def _unsupported(kind: str, endpoint: str) -> GatewayError:
    # UNSUPPORTED_PARAMETER, not UNIMPLEMENTED: routing skips this candidate and tries the next one.
    return GatewayError(Reason.UNSUPPORTED_PARAMETER, f"Provider kind '{kind}' does not support {endpoint}.")


def _check(candidate: route_pb2.RouteCandidate) -> None:
    if not candidate.endpoint.base_url or not candidate.upstream_model:
        raise GatewayError(Reason.INVALID_REQUEST, "candidate.endpoint.base_url and candidate.upstream_model "
                                                   "are required.")


class AdapterServicer(adapter_service_pb2_grpc.AdapterServiceServicer):
    """Calls the provider a RouteCandidate names and answers OpenAI JSON bytes."""

    def __init__(self, registry: AdapterRegistry, http: HttpClient,
                 endpoints: ConfiguredEndpoints | None = None) -> None:
        self._registry = registry
        self._http = http
        self._endpoints = endpoints

    @classmethod
    def create(cls, *, default_timeout_s: float = 120.0, connect_timeout_s: float = 10.0,
               environ: Mapping[str, str] | None = None,
               transport: Transport | None = None, key_envs: frozenset[str] | None = None,
               providers: Iterable[ProviderConfig] | None = None) -> AdapterServicer:
        """The servicer with its own HTTP client and every known adapter (`environ` defaults to
        this process's environment; `transport` to the pooled aiohttp one).

        `providers`: the config file's; a candidate whose endpoint is not one of them is refused
        (endpoints.py). Workers always pass them (none at all refuses every call); None trusts the
        candidate, for tests that drive adapters against fakes directly."""
        http = HttpClient(transport)
        providers = tuple(providers) if providers is not None else None
        refusing = frozenset(p.name for p in providers or () if not p.stream_options)
        deps = AdapterDeps(http=http, credentials=CredentialResolver(environ, allowed_names=key_envs),
                           default_timeout_s=default_timeout_s, connect_timeout_s=connect_timeout_s,
                           no_stream_options=refusing)
        endpoints = ConfiguredEndpoints(providers) if providers is not None else None
        return cls(AdapterRegistry.build(deps), http, endpoints)

    def _call(self, candidate: route_pb2.RouteCandidate, capability: str, endpoint: str) -> Any:
        """The adapter method serving `capability` for the candidate's kind. `complete` and `image`
        are optional: a kind without them fails with UNSUPPORTED_PARAMETER."""
        _check(candidate)
        if self._endpoints is not None:
            self._endpoints.check(candidate.endpoint)
        kind = candidate.endpoint.kind
        method = getattr(self._registry.adapter_for(kind), capability, None)
        if method is None:
            raise _unsupported(kind, endpoint)
        return method

    @rpc_method
    async def Chat(self, request: adapter_service_pb2.ChatRequest,
                   context: Any) -> AsyncIterator[adapter_service_pb2.ChatResponse]:
        """Streams one event per upstream chunk, or one event with the whole completion."""
        # aclosing: whoever stops reading us (client gone, caller done) closes the upstream now.
        async with aclosing(self._call(request.candidate, "chat", "chat")(request)) as events:
            async for event in events:
                yield event

    @rpc_method
    async def Embed(self, request: adapter_service_pb2.EmbedRequest,
                    context: Any) -> adapter_service_pb2.EmbedResponse:
        """Calls an embedding model."""
        response: adapter_service_pb2.EmbedResponse = await self._call(
            request.candidate, "embed", "embeddings")(request)
        return response

    @rpc_method
    async def Complete(self, request: adapter_service_pb2.CompleteRequest,
                       context: Any) -> AsyncIterator[adapter_service_pb2.ChatResponse]:
        """Streams a legacy text completion like Chat (bodies are `text_completion` JSON)."""
        async with aclosing(self._call(request.candidate, "complete", "completions")(request)) as events:
            async for event in events:
                yield event

    @rpc_method
    async def Image(self, request: adapter_service_pb2.ImageRequest,
                    context: Any) -> adapter_service_pb2.ImageResponse:
        """Generates, edits or varies images."""
        response: adapter_service_pb2.ImageResponse = await self._call(
            request.candidate, "image", "images")(request)
        return response

    async def close(self) -> None:
        """Closes the pooled upstream connections."""
        await self._http.close()
