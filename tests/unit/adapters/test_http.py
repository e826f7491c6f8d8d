"""The HTTP client without a network: exception translation and connection release."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from services.adapters.http import HttpClient, HttpRequest, iter_sse, transport_errors
from services.core.errors import GatewayError, Reason
from tests.unit.adapters.mock_transport import CannedResponse, MockTransport

REQUEST = HttpRequest("POST", "http://upstream/v1/chat/completions", {}, b"{}")


class _Key:
    ssl = False
    host, port = "upstream", 443


@pytest.mark.parametrize("exc, reason", [
    (TimeoutError(), Reason.UPSTREAM_TIMEOUT),
    (aiohttp.ServerTimeoutError("read"), Reason.UPSTREAM_TIMEOUT),
    (aiohttp.ConnectionTimeoutError("connect"), Reason.UPSTREAM_TIMEOUT),
    (aiohttp.ClientConnectorError(_Key(), OSError(111, "refused")), Reason.UPSTREAM_UNAVAILABLE),  # type: ignore[arg-type]
    (aiohttp.ServerDisconnectedError(), Reason.UPSTREAM_UNAVAILABLE),
    (aiohttp.ClientOSError(104, "reset"), Reason.UPSTREAM_UNAVAILABLE),
    (aiohttp.ClientPayloadError("truncated"), Reason.UPSTREAM_ERROR),
    (aiohttp.InvalidURL("nope"), Reason.UPSTREAM_ERROR),
])
def test_library_exceptions_become_gateway_errors(exc: BaseException, reason: Reason) -> None:
    with pytest.raises(GatewayError) as info, transport_errors():
        raise exc
    assert info.value.reason is reason
    assert "upstream" in info.value.message.lower()


def test_cancellation_and_other_errors_pass_through() -> None:
    with pytest.raises(asyncio.CancelledError), transport_errors():
        raise asyncio.CancelledError()
    with pytest.raises(KeyError), transport_errors():
        raise KeyError("x")


async def test_a_read_response_goes_back_to_the_pool() -> None:
    transport = MockTransport(lambda r: CannedResponse(chunks=[b"ok"]))
    async with HttpClient(transport).open(REQUEST) as response:
        assert await response.read() == b"ok"
    assert transport.responses[0].released and not transport.responses[0].closed


async def test_an_abandoned_response_is_closed() -> None:
    transport = MockTransport(lambda r: CannedResponse(chunks=[b"data: 1\n\n", b"data: 2\n\n"]))
    client = HttpClient(transport)

    async def consume() -> None:
        async with client.open(REQUEST) as response:
            async for _ in iter_sse(response):
                raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError):
        await consume()
    assert transport.responses[0].closed and not transport.responses[0].released


async def test_iter_sse_yields_per_read() -> None:
    response = CannedResponse(chunks=[b"data: a\n", b"\ndata: b\n\n", b"data: c"])
    events = []
    async for event in iter_sse(response):
        events.append((event.data, response.reads))
    assert events == [(b"a", 2), (b"b", 2), (b"c", 3)]


async def test_close_closes_the_transport() -> None:
    transport = MockTransport(lambda r: CannedResponse())
    await HttpClient(transport).close()
    assert transport.closed
