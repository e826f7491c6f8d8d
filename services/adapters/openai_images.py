"""OpenAI's image endpoints: translation and the multipart encoder, pure functions, no I/O.

    generation          -> POST {base_url}/images/generations   JSON, translated like chat
    upload "edit"       -> POST {base_url}/images/edits         multipart/form-data rebuilt from
    upload "variation"  -> POST {base_url}/images/variations    the parsed ImageUpload

In both, `model` becomes the upstream's name and our extensions (`models`, `provider`) are not
sent. Streaming (`stream: true`, partial images) is refused with UNSUPPORTED_PARAMETER: the
ImageResponse is one body, and routing may try a later candidate.

The answer is OpenAI's JSON with the `provider` object added and nothing else changed (an images
response has no `model` to relabel). GPT image models report `usage` as
`{input_tokens, output_tokens, total_tokens, input_tokens_details}`; it becomes our Usage with
prompt_tokens = input_tokens and completion_tokens = output_tokens.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import chat_pb2, image_pb2
from services.adapters import openai_translate as translate
from services.adapters.capabilities import unsupported_parameter
from services.adapters.json_values import parse_object
from services.core.errors import GatewayError, Reason

UPLOAD_PATHS: Mapping[str, str] = MappingProxyType({"edit": "/images/edits",
                                                    "variation": "/images/variations"})
DEFAULT_FILE_TYPE = "application/octet-stream"
_TRUE_TEXTS = frozenset({"true", "1"})  # how multipart clients spell a boolean (the SDK sends "true")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# WHATWG's multipart/form-data encoding of names and filenames inside the quoted header value.
_HEADER_ESCAPES = str.maketrans({'"': "%22", "\r": "%0D", "\n": "%0A"})


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What to send: the path under the base URL, the encoded body and its content type."""

    path: str
    body: bytes
    content_type: str


def _refuse_stream() -> GatewayError:
    return unsupported_parameter("stream", "The parameter 'stream' is not supported for images by this "
                                           "gateway yet.")


def generation_call(request: image_pb2.ImageGenerationRequest, upstream_model: str) -> UpstreamCall:
    """The JSON call of an image generation."""
    if request.stream:
        raise _refuse_stream()
    body = translate.request_json(request, upstream_model)
    return UpstreamCall("/images/generations", orjson.dumps(body), "application/json")


def upload_fields(upload: image_pb2.ImageUpload, upstream_model: str) -> list[tuple[str, str]]:
    """The text fields to send: `model` first (always the upstream's), the rest sorted by name,
    our extensions left out."""
    rest = sorted((name, value) for name, value in upload.fields.items()
                  if name != "model" and name not in translate.EXTENSION_FIELDS)
    return [("model", upstream_model), *rest]


def upload_call(upload: image_pb2.ImageUpload, upstream_model: str) -> UpstreamCall:
    """The multipart call of an image edit or variation."""
    path = UPLOAD_PATHS.get(upload.operation)
    if path is None:
        raise GatewayError(Reason.INVALID_REQUEST, "ImageUpload.operation must be 'edit' or 'variation'.")
    if upload.fields.get("stream", "").strip().lower() in _TRUE_TEXTS:
        raise _refuse_stream()
    body, boundary = encode_multipart(upload_fields(upload, upstream_model), upload.files)
    return UpstreamCall(path, body, f"multipart/form-data; boundary={boundary}")


def upstream_call(call: adapter_service_pb2.ImageRequest, upstream_model: str) -> UpstreamCall:
    """The upstream call of an ImageRequest, whichever operation it holds."""
    operation = call.WhichOneof("operation")
    if operation == "generation":
        return generation_call(call.generation, upstream_model)
    if operation == "upload":
        return upload_call(call.upload, upstream_model)
    raise GatewayError(Reason.INVALID_REQUEST, "ImageRequest needs a generation or an upload.")


def _quoted(value: str) -> bytes:
    return b'"' + value.translate(_HEADER_ESCAPES).encode() + b'"'


def _file_type(file: image_pb2.UploadedFile) -> bytes:
    content_type = file.content_type.strip() or DEFAULT_FILE_TYPE
    if _CONTROL.search(content_type):  # would break out of the part's header
        raise GatewayError(Reason.INVALID_REQUEST,
                           f"The content type of file field '{file.field}' is invalid.", param=file.field)
    return content_type.encode()


def _parts(fields: Sequence[tuple[str, str]],
           files: Sequence[image_pb2.UploadedFile]) -> list[tuple[bytes, bytes]]:
    """(headers, content) of every part, text fields first, files in their order."""
    parts = [(b"Content-Disposition: form-data; name=" + _quoted(name), value.encode())
             for name, value in fields]
    for file in files:
        disposition = b"Content-Disposition: form-data; name=" + _quoted(file.field)
        disposition += b"; filename=" + _quoted(file.filename or file.field)
        parts.append((disposition + b"\r\nContent-Type: " + _file_type(file), file.data))
    return parts


def _boundary(parts: Sequence[tuple[bytes, bytes]]) -> str:
    """A boundary derived from the content (deterministic: same upload, same bytes) that occurs in
    none of it."""
    digest = hashlib.blake2b(digest_size=16)
    for headers, content in parts:
        digest.update(headers)
        digest.update(content)
    for salt in range(1_000):
        candidate = f"aggregator-{digest.hexdigest()}{salt or ''}"
        delimiter = b"--" + candidate.encode()
        if not any(delimiter in headers or delimiter in content for headers, content in parts):
            return candidate
    raise GatewayError(Reason.INTERNAL, "No multipart boundary fits this upload.")  # unreachable in practice


def encode_multipart(fields: Sequence[tuple[str, str]],
                     files: Sequence[image_pb2.UploadedFile]) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) and its boundary: text fields as they are (UTF-8),
    files with their field name, filename and content type."""
    parts = _parts(fields, files)
    boundary = _boundary(parts)
    delimiter = b"--" + boundary.encode()
    out = bytearray()
    for headers, content in parts:
        out += delimiter + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
    out += delimiter + b"--\r\n"
    return bytes(out), boundary


def _count(obj: Any, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_to_proto(usage: dict[str, Any]) -> chat_pb2.Usage:
    """An images `usage` object as our Usage: input tokens (text and image) are the prompt, output
    tokens the completion; cached input tokens, when reported, are a breakdown of the prompt."""
    result = chat_pb2.Usage(prompt_tokens=_count(usage, "input_tokens"),
                            completion_tokens=_count(usage, "output_tokens"),
                            total_tokens=_count(usage, "total_tokens"))
    cached = _count(usage.get("input_tokens_details"), "cached_tokens")
    if cached:
        result.prompt_tokens_details.cached_tokens = cached
    if not result.total_tokens:
        result.total_tokens = result.prompt_tokens + result.completion_tokens
    return result


def image_response(raw: bytes, target: translate.Target,
                   latency_ms: int) -> adapter_service_pb2.ImageResponse:
    """The answer of an image call: the upstream JSON with `provider` added."""
    obj = parse_object(raw)
    obj["provider"] = translate.provider_extension(target, obj.get("model"), latency_ms)
    data = obj.get("data")
    response = adapter_service_pb2.ImageResponse(body=orjson.dumps(obj), latency_ms=latency_ms,
                                                 images=len(data) if isinstance(data, list) else 0)
    usage = obj.get("usage")
    if isinstance(usage, dict):
        response.usage.CopyFrom(usage_to_proto(usage))
    return response
