"""The conformance harness: each case runs for every provider profile that supports it, through
the AdapterServicer called in-process and through a real grpc.aio server, against a fake
upstream over real HTTP.

Mark a case with `@pytest.mark.conformance("<case>")` and take the `harness` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from aggregator.adapter.v1 import adapter_service_pb2, adapter_service_pb2_grpc
from aggregator.openai.v1 import chat_pb2, embedding_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters.servicer import AdapterServicer
from services.core.errors import GatewayError, from_rpc_error
from services.core.rpc import InProcessContext
from tests.conformance.providers import ENVIRON, PROFILES, ProviderProfile
from tests.fakes.openai_upstream import FakeOpenAI

TRANSPORTS = ("inproc", "grpc")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance(case): a case of the adapter conformance suite")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "profile" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("conformance")
    case = marker.args[0] if marker else None
    profiles = [p for p in PROFILES if case is None or case in p.supports]
    metafunc.parametrize("profile", profiles, ids=[p.id for p in profiles])


class MinimalContext(InProcessContext):
    """A servicer context for direct calls: errors surface as GatewayError."""

    def invocation_metadata(self) -> tuple[()]:
        return ()


@dataclass
class Service:
    """The servicer under test and, for the grpc transport, a stub on a real server."""

    servicer: AdapterServicer
    stub: adapter_service_pb2_grpc.AdapterServiceStub


@pytest.fixture(scope="session")
async def service() -> AsyncIterator[Service]:
    servicer = AdapterServicer.create(environ=ENVIRON, default_timeout_s=10.0)
    server = grpc.aio.server()
    adapter_service_pb2_grpc.add_AdapterServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Service(servicer, adapter_service_pb2_grpc.AdapterServiceStub(channel))
    await channel.close()
    await server.stop(None)
    await servicer.close()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def harness(profile: ProviderProfile, transport: str, service: Service) -> AsyncIterator[Harness]:
    async with profile.make_fake(profile) as fake:
        yield Harness(profile, transport, service, fake)


@dataclass
class Harness:
    """Drives one provider profile through one transport."""

    profile: ProviderProfile
    transport: str
    service: Service
    fake: FakeOpenAI

    def candidate(self, *, upstream_model: str = "gpt-4o-mini", api_key_env: str | None = None,
                  base_url: str | None = None) -> route_pb2.RouteCandidate:
        endpoint = route_pb2.Endpoint(
            provider=f"prov-{self.profile.id}", kind=self.profile.kind,
            base_url=base_url or self.fake.base_url,
            api_key_env=self.profile.api_key_env if api_key_env is None else api_key_env)
        return route_pb2.RouteCandidate(public_model="smart-model", endpoint=endpoint,
                                        upstream_model=upstream_model,
                                        input_per_1k="0.00015", output_per_1k="0.0006", model_type="chat")

    def chat_request(self, request: dict[str, Any], *, timeout_ms: int = 0, request_id: str = "req-conf-1",
                     **candidate: Any) -> adapter_service_pb2.ChatRequest:
        typed = json_format.ParseDict({"model": "smart-model"} | request, chat_pb2.ChatCompletionRequest())
        return adapter_service_pb2.ChatRequest(candidate=self.candidate(**candidate), request=typed,
                                               request_id=request_id, timeout_ms=timeout_ms)

    async def stream(self, call: adapter_service_pb2.ChatRequest,
                     ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """The servicer's events; a failure surfaces as GatewayError on either transport."""
        try:
            if self.transport == "inproc":
                async for event in self.service.servicer.Chat(call, MinimalContext()):
                    yield event
            else:
                rpc = self.service.stub.Chat(call)
                try:
                    async for event in rpc:
                        yield event
                finally:
                    rpc.cancel()  # a gRPC client that stops reading must say so: cancel the call
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def chat(self, request: dict[str, Any], **options: Any) -> list[adapter_service_pb2.ChatResponse]:
        """Every event of one chat call."""
        return [event async for event in self.stream(self.chat_request(request, **options))]

    async def embed(self, request: dict[str, Any]) -> adapter_service_pb2.EmbedResponse:
        typed = json_format.ParseDict({"model": "smart-model"} | request, embedding_pb2.EmbeddingRequest())
        candidate = self.candidate(upstream_model="text-embedding-3-small")
        call = adapter_service_pb2.EmbedRequest(candidate=candidate,
                                                request=typed, request_id="req-conf-embed")
        try:
            if self.transport == "inproc":
                return await self.service.servicer.Embed(call, MinimalContext())
            return await self.service.stub.Embed(call)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def chat_error(self, request: dict[str, Any], **options: Any) -> GatewayError:
        """The error one chat call fails with (the call must fail)."""
        with pytest.raises(GatewayError) as info:
            await self.chat(request, **options)
        return info.value
