"""The registry's one switch, and the servicer over it (in-process, no network)."""

from __future__ import annotations

import pytest

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient
from services.adapters.openai import OpenAIAdapter
from services.adapters.registry import ADAPTER_MODULES, AdapterDeps, AdapterRegistry, adapter_module
from services.adapters.servicer import AdapterServicer
from services.core.config import PROVIDER_KINDS
from services.core.errors import GatewayError, Reason
from services.core.rpc import InProcessContext
from tests.unit.adapters.mock_transport import MockTransport, json_response


class Context(InProcessContext):
    def invocation_metadata(self) -> tuple[()]:
        return ()


def deps() -> AdapterDeps:
    return AdapterDeps(http=HttpClient(MockTransport(lambda r: json_response({}))),
                       credentials=CredentialResolver({}))


def test_every_configurable_kind_has_an_adapter() -> None:
    registry = AdapterRegistry.build(deps())
    assert set(registry.kinds) == set(PROVIDER_KINDS) == set(ADAPTER_MODULES)
    for kind in PROVIDER_KINDS:
        module = adapter_module(kind)
        assert module is not None and module.SUPPORTED_CHAT_PARAMETERS, kind


def test_openai_and_compatible_share_one_adapter_class() -> None:
    registry = AdapterRegistry.build(deps())
    assert isinstance(registry.adapter_for("openai"), OpenAIAdapter)
    assert isinstance(registry.adapter_for("openai_compatible"), OpenAIAdapter)


@pytest.mark.parametrize("kind", ["mistral", "OpenAI", ""])
def test_unknown_kind_is_unimplemented(kind: str) -> None:
    with pytest.raises(GatewayError) as info:
        AdapterRegistry.build(deps()).adapter_for(kind)
    assert info.value.reason is Reason.UNIMPLEMENTED and f"'{kind}'" in info.value.message


def candidate(kind: str, base_url: str = "http://up/v1") -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(public_model="p", upstream_model="u",
                                    endpoint=route_pb2.Endpoint(provider="x", kind=kind, base_url=base_url))


async def test_servicer_refuses_unknown_kind_and_incomplete_candidates() -> None:
    servicer = AdapterServicer.create(transport=MockTransport(lambda r: json_response({})), environ={})
    with pytest.raises(GatewayError) as info:
        [e async for e in servicer.Chat(adapter_service_pb2.ChatRequest(candidate=candidate("mistral")),
                                        Context())]
    assert info.value.reason is Reason.UNIMPLEMENTED
    with pytest.raises(GatewayError) as info:
        request = adapter_service_pb2.EmbedRequest(candidate=candidate("openai", base_url=""))
        await servicer.Embed(request, Context())
    assert info.value.reason is Reason.INVALID_REQUEST


async def test_servicer_close_closes_the_http_client() -> None:
    transport = MockTransport(lambda r: json_response({}))
    servicer = AdapterServicer.create(transport=transport)
    await servicer.close()
    assert transport.closed
