"""Image translation and the multipart encoder (no I/O): what goes upstream, what comes back."""

from __future__ import annotations

import asyncio
from email import policy
from email.parser import BytesParser
from typing import Any

import orjson
import pytest
from aiohttp import BodyPartReader, MultipartReader, StreamReader
from aiohttp.base_protocol import BaseProtocol
from google.protobuf import json_format
from openai.types import ImagesResponse

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import image_pb2
from services.adapters import openai_images as images
from services.adapters import openai_translate as translate
from services.core.errors import GatewayError, Reason

TARGET = translate.Target(provider="acme", public_model="painter", upstream_model="gpt-image-1")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) + b"\r\n--\r\n"  # binary, CRLFs, dashes

# Every field of ImageGenerationRequest, as a client would send it.
FULL_GENERATION: dict[str, Any] = {
    "model": "painter", "prompt": "a lighthouse at dusk", "n": 2, "quality": "high",
    "response_format": "b64_json", "size": "1024x1536", "style": "vivid", "user": "u-1",
    "background": "transparent", "moderation": "low", "output_compression": 80, "output_format": "webp",
    "partial_images": 0, "stream": False,
}
EXTENSIONS = {"models": ["other"], "provider": {"order": ["a"]}}


def generation(obj: dict[str, Any]) -> image_pb2.ImageGenerationRequest:
    return json_format.ParseDict(obj, image_pb2.ImageGenerationRequest())


def upload(operation: str, fields: dict[str, str],
           *files: tuple[str, str, str, bytes]) -> image_pb2.ImageUpload:
    return image_pb2.ImageUpload(operation=operation, fields=fields, files=[
        image_pb2.UploadedFile(field=f, filename=n, content_type=t, data=d) for f, n, t, d in files])


EDIT = upload("edit", {"model": "painter", "prompt": "add a hat", "n": "2", "size": "1024x1024",
                       "models": "fallback", "provider": '{"order":["a"]}'},
              ("image[]", "cat.png", "image/png", PNG),
              ("image[]", "dog.webp", "image/webp", b"RIFF\x00WEBP"),
              ("mask", "mask.png", "image/png", PNG[::-1]))


def test_generation_body_keeps_every_field_and_drops_extensions() -> None:
    call = images.generation_call(generation(FULL_GENERATION | EXTENSIONS), "gpt-image-1")
    assert (call.path, call.content_type) == ("/images/generations", "application/json")
    assert orjson.loads(call.body) == FULL_GENERATION | {"model": "gpt-image-1"}


def test_generation_stream_is_refused() -> None:
    with pytest.raises(GatewayError) as info:
        images.generation_call(generation({"prompt": "x", "stream": True, "partial_images": 2}), "m")
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.param == "stream"
    with pytest.raises(GatewayError) as info:
        images.upload_call(upload("edit", {"prompt": "x", "stream": "True"}), "gpt-image-1")
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.param == "stream"
    kept = images.upload_call(upload("edit", {"prompt": "x", "stream": "false"}), "gpt-image-1")
    assert b'name="stream"\r\n\r\nfalse\r\n' in kept.body


def test_upload_fields_replace_model_and_drop_extensions() -> None:
    assert images.upload_fields(EDIT, "gpt-image-1") == [
        ("model", "gpt-image-1"), ("n", "2"), ("prompt", "add a hat"), ("size", "1024x1024")]
    # A client that named no model still reaches the routed one.
    assert images.upload_fields(upload("variation", {}), "dall-e-2") == [("model", "dall-e-2")]


@pytest.mark.parametrize("operation, path", [("edit", "/images/edits"), ("variation", "/images/variations")])
def test_upload_paths(operation: str, path: str) -> None:
    assert images.upload_call(upload(operation, {}), "m").path == path


def test_unknown_operation_and_missing_operation_are_invalid() -> None:
    with pytest.raises(GatewayError) as info:
        images.upload_call(upload("inpaint", {}), "m")
    assert info.value.reason is Reason.INVALID_REQUEST
    with pytest.raises(GatewayError) as info:
        images.upstream_call(adapter_service_pb2.ImageRequest(), "m")
    assert info.value.reason is Reason.INVALID_REQUEST


def parsed_with_email(content_type: str, body: bytes) -> list[tuple[str, str | None, str, bytes]]:
    head = b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    assert message.is_multipart() and not message.defects
    out = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        out.append((name, part.get_filename(), part.get_content_type(), payload))
    return out


async def parsed_with_aiohttp(content_type: str, body: bytes) -> list[tuple[str, str | None, str, bytes]]:
    loop = asyncio.get_running_loop()
    stream = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    stream.feed_data(body)
    stream.feed_eof()
    reader = MultipartReader({"Content-Type": content_type}, stream)
    out = []
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        out.append((part.name or "", part.filename, part.headers.get("Content-Type", "text/plain"),
                    bytes(await part.read())))
    return out


EXPECTED_PARTS = [
    ("model", None, "text/plain", b"gpt-image-1"), ("n", None, "text/plain", b"2"),
    ("prompt", None, "text/plain", b"add a hat"), ("size", None, "text/plain", b"1024x1024"),
    ("image[]", "cat.png", "image/png", PNG), ("image[]", "dog.webp", "image/webp", b"RIFF\x00WEBP"),
    ("mask", "mask.png", "image/png", PNG[::-1]),
]


def test_multipart_round_trip_through_the_email_parser() -> None:
    call = images.upload_call(EDIT, "gpt-image-1")
    assert call.content_type.startswith("multipart/form-data; boundary=aggregator-")
    assert parsed_with_email(call.content_type, call.body) == EXPECTED_PARTS


async def test_multipart_round_trip_through_aiohttps_reader() -> None:
    call = images.upload_call(EDIT, "gpt-image-1")
    assert await parsed_with_aiohttp(call.content_type, call.body) == EXPECTED_PARTS


async def test_multipart_escapes_names_and_keeps_utf8_text() -> None:
    prompt = "un chapeau \u00e9l\u00e9gant \u2014 \U0001f3a9"
    tricky = upload("edit", {"prompt": prompt},
                    ("image", 'my "best"\r\ncat.png', "", b"data"))
    call = images.upload_call(tricky, "m")
    assert b'filename="my %22best%22%0D%0Acat.png"' in call.body
    assert b"Content-Type: application/octet-stream" in call.body  # a file without a type
    parts = await parsed_with_aiohttp(call.content_type, call.body)
    assert parts[1] == ("prompt", None, "text/plain", prompt.encode())
    assert parts[2][1] == "my %22best%22%0D%0Acat.png" and parts[2][3] == b"data"


def test_multipart_refuses_a_content_type_that_breaks_the_header() -> None:
    with pytest.raises(GatewayError) as info:
        images.upload_call(upload("edit", {}, ("image", "a.png", "image/png\r\nX-Evil: 1", b"x")), "m")
    assert info.value.reason is Reason.INVALID_REQUEST and info.value.param == "image"


def test_boundary_is_deterministic_and_delimits_each_part() -> None:
    files = list(EDIT.files)
    body, boundary = images.encode_multipart([("prompt", "x")], files)
    assert images.encode_multipart([("prompt", "x")], files) == (body, boundary)
    assert body.count(b"--" + boundary.encode()) == 1 + len(files) + 1  # one per part, then the close
    assert body.endswith(b"--" + boundary.encode() + b"--\r\n")


class FixedDigest:
    """A content hash that always gives the same digest, so a file can contain the first boundary."""

    def __init__(self, **_: Any) -> None:
        pass

    def update(self, _: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 32


def test_a_boundary_found_in_the_content_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.hashlib, "blake2b", FixedDigest)
    sneaky = image_pb2.UploadedFile(field="image", filename="a", content_type="image/png",
                                    data=b"\r\n--aggregator-" + b"0" * 32 + b"--\r\n")
    body, boundary = images.encode_multipart([], [sneaky])
    assert boundary == "aggregator-" + "0" * 32 + "1"
    assert parsed_with_email(f"multipart/form-data; boundary={boundary}", body) == [
        ("image", "a", "image/png", sneaky.data)]


GPT_IMAGE_ANSWER = {"created": 1713833628, "background": "opaque", "output_format": "png", "quality": "low",
                    "size": "1024x1024", "data": [{"b64_json": "iVBORw0KGgo="}, {"b64_json": "iVBORw0KGgp="}],
                    "usage": {"input_tokens": 50, "output_tokens": 544, "total_tokens": 594,
                              "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}}


def test_image_response_adds_provider_and_nothing_else() -> None:
    response = images.image_response(orjson.dumps(GPT_IMAGE_ANSWER), TARGET, 812)
    body = orjson.loads(response.body)
    assert body.pop("provider") == {"name": "acme", "model": "gpt-image-1", "latency_ms": 812}
    assert body == GPT_IMAGE_ANSWER
    ImagesResponse.model_validate(orjson.loads(response.body))
    assert (response.images, response.latency_ms) == (2, 812)
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (50, 544, 594)


def test_image_response_without_usage_and_with_cached_input() -> None:
    dalle = {"created": 1, "data": [{"url": "https://x/1.png", "revised_prompt": "a cat"}]}
    response = images.image_response(orjson.dumps(dalle), TARGET, 3)
    assert not response.HasField("usage") and response.images == 1
    cached = {"created": 1, "data": [], "usage": {"input_tokens": 30, "output_tokens": 0,
                                                  "input_tokens_details": {"cached_tokens": 20}}}
    usage = images.image_response(orjson.dumps(cached), TARGET, 3).usage
    assert (usage.prompt_tokens, usage.total_tokens) == (30, 30)
    assert usage.prompt_tokens_details.cached_tokens == 20


def test_image_response_that_is_not_json_is_an_upstream_error() -> None:
    with pytest.raises(GatewayError) as info:
        images.image_response(b"<html>", TARGET, 1)
    assert info.value.reason is Reason.UPSTREAM_ERROR
