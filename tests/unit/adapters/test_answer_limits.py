"""An upstream answer is read up to MAX_ANSWER_BYTES; past it, a 502 that names the limit."""

from __future__ import annotations

import pytest

from edge.openai_servicer import json_chunks
from services.adapters.upstream import read_answer
from services.core.errors import GatewayError, Reason
from tests.unit.adapters.mock_transport import CannedResponse


async def test_an_answer_within_the_limit_is_read_whole() -> None:
    response = CannedResponse(chunks=[b"x" * 60, b"y" * 40])
    assert await read_answer(response, limit=100) == b"x" * 60 + b"y" * 40


async def test_an_answer_past_the_limit_is_a_502_naming_it() -> None:
    with pytest.raises(GatewayError) as info:
        await read_answer(CannedResponse(chunks=[b"x" * 2048]), limit=1024)
    error = info.value
    assert error.reason is Reason.RESPONSE_TOO_LARGE and error.http_status == 502
    assert "1,024 bytes" in error.message and not error.retriable


async def test_a_declared_length_past_the_limit_is_refused_before_reading() -> None:
    response = CannedResponse(chunks=[b"never read"], header_items={"Content-Length": str(2**40)})
    with pytest.raises(GatewayError) as info:
        await read_answer(response, limit=1024)
    assert info.value.reason is Reason.RESPONSE_TOO_LARGE


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5000])
def test_json_chunks_split_and_rejoin_exactly(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    pieces = list(json_chunks(data, size=1024))
    assert b"".join(p.data for p in pieces) == data
    assert all(len(p.data) <= 1024 for p in pieces) and len(pieces) == max(1, -(-size // 1024))
    assert all(p.content_type == "application/json" for p in pieces)
