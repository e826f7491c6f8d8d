"""Parsing of image uploads (multipart/form-data), as the openai SDK sends them."""

from __future__ import annotations

import httpx
import pytest

from edge.multipart import parse_image_upload
from services.core.errors import GatewayError, Reason

PNG = b"\x89PNG\r\n\x1a\n\x00\x01binary\r\n--not-a-boundary\r\n"


def encoded(files: dict, data: dict) -> tuple[str, bytes]:
    """The body httpx (the openai SDK's transport) builds for a multipart upload."""
    request = httpx.Request("POST", "http://x/v1/images/edits", files=files, data=data)
    return request.headers["content-type"], request.read()


def test_fields_and_files_survive_byte_for_byte() -> None:
    content_type, body = encoded(
        {"image": ("cat.png", PNG, "image/png"), "mask": ("m.png", b"MASK", "image/png")},
        {"model": "dall-e-2", "prompt": "a cat, é", "n": "2"},
    )
    upload = parse_image_upload(content_type, body, "edit")
    assert upload.operation == "edit"
    assert dict(upload.fields) == {"model": "dall-e-2", "prompt": "a cat, é", "n": "2"}
    assert [(f.field, f.filename, f.content_type, f.data) for f in upload.files] == [
        ("image", "cat.png", "image/png", PNG),
        ("mask", "m.png", "image/png", b"MASK"),
    ]


def test_repeated_image_fields_keep_their_order() -> None:
    content_type, body = encoded(
        [("image[]", ("a.png", b"A", "image/png")), ("image[]", ("b.png", b"B", "image/png"))],
        {"model": "gpt-image-1", "prompt": "merge"},
    )
    upload = parse_image_upload(content_type, body, "edit")
    assert [f.data for f in upload.files] == [b"A", b"B"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"model": "dall-e-2"}'),
        ("multipart/form-data", b"no boundary"),
    ],
)
def test_not_multipart_is_400(content_type: str, body: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_image_upload(content_type, body, "variation")
    assert caught.value.reason is Reason.INVALID_REQUEST and caught.value.http_status == 400
