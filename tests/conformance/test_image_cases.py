"""Image conformance (`AdapterService.Image`): generation, edit and variation, through the servicer
in-process and over gRPC, against a real fake upstream that parses the multipart bodies.

Case `images`: only OpenAI-style providers have the images endpoints, so the upstream requests are
read as OpenAI's (`harness.sent().body`). Every profile that declares the case out must refuse
them with UNSUPPORTED_PARAMETER before sending.
"""

from __future__ import annotations

import socket
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format
from openai.types import ImagesResponse

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import image_pb2
from services.core.errors import GatewayError, Reason, from_rpc_error
from tests.conformance.conftest import Harness, MinimalContext
from tests.fakes import openai_payloads as payloads

pytestmark = pytest.mark.conformance("images")
PICTURE, MASK = payloads.png((200, 10, 10)), payloads.png((0, 0, 0))


async def call_image(harness: Harness,
                     call: adapter_service_pb2.ImageRequest) -> adapter_service_pb2.ImageResponse:
    try:
        if harness.transport == "inproc":
            return await harness.service.servicer.Image(call, MinimalContext())
        return await harness.service.stub.Image(call)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


async def generate(harness: Harness, request: dict[str, Any], upstream_model: str = "gpt-image-1",
                   **candidate: Any) -> adapter_service_pb2.ImageResponse:
    typed = json_format.ParseDict({"model": "smart-model"} | request, image_pb2.ImageGenerationRequest())
    return await call_image(harness, adapter_service_pb2.ImageRequest(
        candidate=harness.candidate(upstream_model=upstream_model, **candidate), generation=typed,
        request_id="req-conf-image"))


async def upload(harness: Harness, operation: str, fields: dict[str, str], *files: tuple[str, str, bytes],
                 upstream_model: str = "gpt-image-1") -> adapter_service_pb2.ImageResponse:
    typed = image_pb2.ImageUpload(operation=operation, fields=fields, files=[
        image_pb2.UploadedFile(field=field, filename=name, content_type="image/png", data=data)
        for field, name, data in files])
    return await call_image(harness, adapter_service_pb2.ImageRequest(
        candidate=harness.candidate(upstream_model=upstream_model), upload=typed,
        request_id="req-conf-upload"))


async def upload_error(harness: Harness, *args: Any, **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await upload(harness, *args, **kwargs)
    return info.value


def parsed(harness: Harness, response: adapter_service_pb2.ImageResponse,
           upstream_model: str) -> ImagesResponse:
    body = orjson.loads(response.body)
    assert body["provider"]["name"] == f"prov-{harness.profile.id}"
    assert body["provider"]["model"] == harness.profile.wire.reported_model(upstream_model)
    assert isinstance(body["provider"]["latency_ms"], int)
    assert "model" not in body  # nothing is added but `provider`
    return ImagesResponse.model_validate(body)


async def test_generation_gpt_image(harness: Harness) -> None:
    response = await generate(harness, {"prompt": "a red fox in snow", "n": 2, "quality": "low",
                                        "models": ["fallback"], "provider": {"order": ["a"]}})
    images = parsed(harness, response, "gpt-image-1")
    assert [bool(d.b64_json) for d in images.data or []] == [True, True] and images.quality == "low"
    assert set(orjson.loads(response.body)) == {"created", "data", "background", "output_format", "quality",
                                                "size", "usage", "provider"}
    assert response.images == 2
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 2 * 272, 5 + 2 * 272)
    sent = harness.sent()
    assert sent.path == "/v1/images/generations" and sent.request_id() == "req-conf-image"
    assert sent.body == {"model": "gpt-image-1", "prompt": "a red fox in snow", "n": 2, "quality": "low"}


async def test_generation_dalle_url(harness: Harness) -> None:
    response = await generate(harness, {"prompt": "a fox", "response_format": "url", "size": "1024x1024"},
                              upstream_model="dall-e-3")
    [image] = parsed(harness, response, "dall-e-3").data or []
    assert image.url and image.revised_prompt == "A picture of a fox"
    assert response.images == 1 and not response.HasField("usage")


async def test_edit_with_image_and_mask(harness: Harness) -> None:
    response = await upload(harness, "edit", {"model": "smart-model", "prompt": "add a hat", "n": "1",
                                              "models": "fallback"},
                            ("image", "cat.png", PICTURE), ("mask", "mask.png", MASK))
    images = parsed(harness, response, "gpt-image-1")
    assert len(images.data or []) == 1 and response.images == 1
    assert response.usage.prompt_tokens == 3 + payloads.IMAGE_INPUT_TOKENS
    sent = harness.sent()
    assert sent.path == "/v1/images/edits" and sent.headers["content-type"].startswith("multipart/form-data")
    assert sent.body == {"model": "gpt-image-1", "prompt": "add a hat", "n": "1"}
    assert [(f.field, f.filename, f.content_type, f.data) for f in sent.recorded.files] == [
        ("image", "cat.png", "image/png", PICTURE), ("mask", "mask.png", "image/png", MASK)]
    assert sent.api_key() == harness.profile.api_key


async def test_edit_with_several_images(harness: Harness) -> None:
    response = await upload(harness, "edit", {"prompt": "merge"},
                            ("image[]", "a.png", PICTURE), ("image[]", "b.png", MASK))
    assert response.usage.prompt_tokens == 1 + 2 * payloads.IMAGE_INPUT_TOKENS
    assert [f.filename for f in harness.sent().recorded.files] == ["a.png", "b.png"]


async def test_variation(harness: Harness) -> None:
    response = await upload(harness, "variation", {"n": "2", "response_format": "b64_json"},
                            ("image", "cat.png", PICTURE), upstream_model="dall-e-2")
    images = parsed(harness, response, "dall-e-2")
    assert all(d.b64_json for d in images.data or []) and response.images == 2
    sent = harness.sent()
    assert sent.path == "/v1/images/variations" and sent.body["model"] == "dall-e-2"


@pytest.mark.parametrize("preset, args, reason, expect", [
    ("rate_limited", (3,), Reason.UPSTREAM_RATE_LIMITED, {"retry_after": 3.0}),
    ("bad_request", ("Invalid size.", "size", "invalid_value"), Reason.UPSTREAM_BAD_REQUEST,
     {"param": "size", "code": "invalid_value", "message": "Invalid size."}),
    ("unauthorized", (), Reason.UPSTREAM_AUTH_FAILED, {}),
    ("server_error", (500,), Reason.UPSTREAM_ERROR, {}),
    ("timeout", (504,), Reason.UPSTREAM_TIMEOUT, {}),
])
@pytest.mark.parametrize("operation", ["generation", "edit"])
async def test_errors(harness: Harness, operation: str, preset: str, args: tuple[Any, ...], reason: Reason,
                      expect: dict[str, Any]) -> None:
    harness.fake.fail_next(getattr(harness.profile.failures, preset)(*args))
    with pytest.raises(GatewayError) as info:
        if operation == "generation":
            await generate(harness, {"prompt": "x"})
        else:
            await upload(harness, "edit", {"prompt": "x"}, ("image", "a.png", PICTURE))
    assert info.value.reason is reason and "sk-" not in info.value.message
    for attribute, value in expect.items():
        assert getattr(info.value, attribute) == value, attribute


async def test_upstream_validation_error_names_the_field(harness: Harness) -> None:
    error = await upload_error(harness, "edit", {"n": "1"}, ("image", "a.png", PICTURE))  # no prompt
    assert error.reason is Reason.UPSTREAM_BAD_REQUEST and error.param == "prompt"


async def test_streaming_images_is_refused_before_sending(harness: Harness) -> None:
    with pytest.raises(GatewayError) as info:
        await generate(harness, {"prompt": "x", "stream": True, "partial_images": 2})
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.param == "stream"
    error = await upload_error(harness, "edit", {"prompt": "x", "stream": "true"},
                               ("image", "a.png", PICTURE))
    assert error.reason is Reason.UNSUPPORTED_PARAMETER
    assert not harness.fake.requests


async def test_unreachable_upstream(harness: Harness) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(GatewayError) as info:
        await generate(harness, {"prompt": "x"}, base_url=f"http://127.0.0.1:{port}/v1")
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE


@pytest.mark.conformance("images", declared_out=True)
async def test_a_kind_without_images_refuses_them(harness: Harness) -> None:
    with pytest.raises(GatewayError) as info:
        await generate(harness, {"prompt": "x"})
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.http_status == 400
    assert info.value.message == f"Provider kind '{harness.profile.kind}' does not support images."
    error = await upload_error(harness, "edit", {"prompt": "x"}, ("image", "a.png", PICTURE))
    assert error.reason is Reason.UNSUPPORTED_PARAMETER
    assert not harness.fake.requests
