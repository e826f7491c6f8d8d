"""OpenAIAdapter.image and AdapterServicer.Image over a MockTransport (no network)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.protobuf import json_format

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import image_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient
from services.adapters.openai import OpenAIAdapter
from services.adapters.registry import AdapterRegistry
from services.adapters.servicer import AdapterServicer
from services.core.errors import GatewayError, Reason
from services.core.rpc import InProcessContext
from tests.unit.adapters.mock_transport import MockTransport, json_response
from tests.unit.adapters.test_openai_images import EDIT, GPT_IMAGE_ANSWER, parsed_with_email

ENV = {"ACME_KEY": "sk-acme-secret"}


class Context(InProcessContext):
    def invocation_metadata(self) -> tuple[()]:
        return ()


def candidate(kind: str = "openai") -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(
        public_model="painter", upstream_model="gpt-image-1", model_type="image", endpoint=route_pb2.Endpoint(
            provider="acme", kind=kind, base_url="https://api.acme.test/v1/", api_key_env="ACME_KEY"))


def generation_call(request: dict[str, Any], kind: str = "openai") -> adapter_service_pb2.ImageRequest:
    typed = json_format.ParseDict({"model": "painter"} | request, image_pb2.ImageGenerationRequest())
    return adapter_service_pb2.ImageRequest(candidate=candidate(kind), generation=typed, request_id="req-img",
                                            timeout_ms=90_000)


def adapter(transport: MockTransport) -> OpenAIAdapter:
    return OpenAIAdapter(HttpClient(transport), CredentialResolver(ENV), default_timeout_s=30.0)


async def test_generation_request_and_answer() -> None:
    transport = MockTransport(lambda r: json_response(GPT_IMAGE_ANSWER))
    response = await adapter(transport).image(generation_call({"prompt": "a fox", "n": 2, "models": ["x"]}))
    sent = transport.sent[0]
    assert (sent.method, sent.url) == ("POST", "https://api.acme.test/v1/images/generations")
    assert sent.headers["Authorization"] == "Bearer sk-acme-secret"
    assert sent.headers["X-Request-Id"] == "req-img"
    assert (sent.headers["Content-Type"], sent.headers["Accept"]) == ("application/json", "application/json")
    assert orjson.loads(sent.body) == {"model": "gpt-image-1", "prompt": "a fox", "n": 2}
    assert (sent.timeouts.total, sent.timeouts.read_idle) == (90.0, 30.0)  # the deadline; the idle timeout
    body = orjson.loads(response.body)
    assert body["provider"]["name"] == "acme" and body["data"] == GPT_IMAGE_ANSWER["data"]
    assert (response.images, response.usage.prompt_tokens, response.usage.completion_tokens) == (2, 50, 544)
    assert transport.responses[0].released


async def test_edit_is_sent_as_multipart() -> None:
    transport = MockTransport(lambda r: json_response(GPT_IMAGE_ANSWER))
    call = adapter_service_pb2.ImageRequest(candidate=candidate(), upload=EDIT, request_id="req-edit")
    await adapter(transport).image(call)
    sent = transport.sent[0]
    assert sent.url == "https://api.acme.test/v1/images/edits"
    assert sent.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    parts = parsed_with_email(sent.headers["Content-Type"], sent.body)
    assert [(name, filename) for name, filename, _, _ in parts] == [
        ("model", None), ("n", None), ("prompt", None), ("size", None),
        ("image[]", "cat.png"), ("image[]", "dog.webp"), ("mask", "mask.png")]
    assert parts[0][3] == b"gpt-image-1"


async def test_variation_goes_to_its_path() -> None:
    transport = MockTransport(lambda r: json_response({"created": 1, "data": [{"url": "https://x/1.png"}]}))
    upload = image_pb2.ImageUpload(operation="variation", fields={"n": "1"}, files=[
        image_pb2.UploadedFile(field="image", filename="a.png", content_type="image/png", data=b"png")])
    response = await adapter(transport).image(
        adapter_service_pb2.ImageRequest(candidate=candidate(), upload=upload))
    assert transport.sent[0].url == "https://api.acme.test/v1/images/variations"
    assert response.images == 1 and not response.HasField("usage")


async def test_upstream_error_is_mapped_and_the_connection_dropped() -> None:
    body = {"error": {"message": "Your request was rejected by the safety system.", "param": None,
                      "type": "image_generation_user_error", "code": "content_policy_violation"}}
    transport = MockTransport(lambda r: json_response(body, 400))
    with pytest.raises(GatewayError) as info:
        await adapter(transport).image(generation_call({"prompt": "x"}))
    assert info.value.reason is Reason.UPSTREAM_BAD_REQUEST and info.value.code == "content_policy_violation"
    assert transport.responses[0].closed


async def test_stream_is_refused_before_sending() -> None:
    transport = MockTransport(lambda r: json_response(GPT_IMAGE_ANSWER))
    with pytest.raises(GatewayError) as info:
        await adapter(transport).image(generation_call({"prompt": "x", "stream": True}))
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and transport.sent == []


class ChatOnlyAdapter:
    """A provider with chat and embeddings only (as anthropic, google and cohere)."""

    def chat(self, call: Any) -> Any:
        raise AssertionError("not called")

    async def embed(self, call: Any) -> Any:
        raise AssertionError("not called")


async def test_servicer_image_calls_the_adapter_or_refuses() -> None:
    transport = MockTransport(lambda r: json_response(GPT_IMAGE_ANSWER))
    http = HttpClient(transport)
    registry = AdapterRegistry({"openai": OpenAIAdapter(http, CredentialResolver(ENV)),
                                "anthropic": ChatOnlyAdapter()})  # type: ignore[dict-item]
    servicer = AdapterServicer(registry, http)
    response = await servicer.Image(generation_call({"prompt": "x"}), Context())
    assert response.images == 2
    with pytest.raises(GatewayError) as info:
        await servicer.Image(generation_call({"prompt": "x"}, kind="anthropic"), Context())
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER
    assert info.value.message == "Provider kind 'anthropic' does not support images."
    assert info.value.http_status == 400 and len(transport.sent) == 1
