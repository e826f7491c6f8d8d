"""The conformance harness: each case runs for every provider profile that supports it, through
the AdapterServicer called in-process and through a real grpc.aio server, against a fake
upstream over real HTTP.

Mark a test with the case it proves and take the `harness` fixture (or `profile`):

- `@pytest.mark.conformance("<case>")`: runs for every profile that supports the case;
- `@pytest.mark.conformance(each=VARIANTS)`: `VARIANTS` maps a name to something with a `.case`
  (e.g. `ERROR_CASES`); runs for every (profile, name) whose case the profile supports, the name
  given as the `variant` argument;
- `declared_out=True`: instead runs for the profiles that declare the case out, to prove what they
  do instead (refuse, or answer the nearest class); `where=lambda profile, name: ...` narrows.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
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
from tests.conformance.cases import CASES
from tests.conformance.providers import ENVIRON, PROFILES, ProviderProfile, WireView

TRANSPORTS = ("inproc", "grpc")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance(case, *, each=, declared_out=, where=): a case of the "
                                       "adapter conformance suite (tests/conformance/conftest.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "profile" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("conformance")
    if marker is None:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: mark it with @pytest.mark.conformance(case)")
    each: Mapping[str, Any] | None = marker.kwargs.get("each")
    variants = {name: v.case for name, v in each.items()} if each is not None else {"": marker.args[0]}
    unknown = set(variants.values()) - set(CASES)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown conformance cases {sorted(unknown)}")
    declared_out: bool = marker.kwargs.get("declared_out", False)
    where: Callable[[ProviderProfile, str], bool] = marker.kwargs.get("where", lambda profile, name: True)
    pairs = [(profile, name) for profile in PROFILES for name, case in variants.items()
             if (case in profile.supports) != declared_out and where(profile, name)]
    if each is None:
        metafunc.parametrize("profile", [p for p, _ in pairs], ids=[p.id for p, _ in pairs])
    else:
        metafunc.parametrize(("profile", "variant"), pairs, ids=[f"{p.id}-{name}" for p, name in pairs])


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
    fake: Any  # the profile's fake upstream (FakeOpenAI's scripting interface)

    def sent(self, index: int = -1) -> WireView:
        """A request the upstream received (the last by default), read through the profile's view."""
        return self.profile.wire(self.fake.requests[index])

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

    async def stream(self, call: Any, method: str = "Chat",
                     ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """The events of a streaming adapter RPC (`Chat`, `Complete`); a failure surfaces as
        GatewayError on either transport."""
        try:
            if self.transport == "inproc":
                async for event in getattr(self.service.servicer, method)(call, MinimalContext()):
                    yield event
            else:
                rpc = getattr(self.service.stub, method)(call)
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
