"""The HTTP/SSE client every adapter shares.

    HttpClient ──> Transport (the seam) ──> AiohttpTransport: one aiohttp.ClientSession, pooled
                                      └──> tests: any object with `send()` and `close()`

aiohttp's and asyncio's exceptions become GatewayError in `transport_errors()` and nowhere else:
connect failures and lost connections are UPSTREAM_UNAVAILABLE, timeouts UPSTREAM_TIMEOUT, broken
payloads UPSTREAM_ERROR. `CancelledError` always passes through untouched. The client never
follows redirects: a base URL is configuration, not something an upstream may change.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from services.adapters.sse import SSEDecoder, SSEEvent
from services.core.errors import GatewayError, Reason

MAX_ERROR_BODY_BYTES = 1024 * 1024  # an upstream's error body is read up to this size


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for connecting, for silence between two reads, and for the whole exchange."""

    connect: float = 10.0
    read_idle: float = 120.0
    total: float | None = None  # None for streams: they may last as long as they keep talking


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One upstream request: the body is already encoded."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    timeouts: Timeouts = Timeouts()


class HttpResponse(Protocol):
    """A response whose headers have arrived; the body is read on demand."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive header lookup."""
        ...

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (at most `limit` bytes)."""
        ...

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in whatever pieces the socket gives."""
        ...

    def release(self) -> None:
        """Gives the connection back to the pool (after the body was read)."""

    def close(self) -> None:
        """Drops the connection at once: the upstream sees the client leave."""


class Transport(Protocol):
    """Sends requests. The seam that lets adapters be tested without a network."""

    async def send(self, request: HttpRequest) -> HttpResponse:
        """Sends `request` and returns once the response headers arrived."""
        ...

    async def close(self) -> None:
        """Frees the transport's connections."""


@contextlib.contextmanager
def transport_errors() -> Iterator[None]:
    """The one place that turns the HTTP library's exceptions into GatewayError."""
    try:
        yield
    except TimeoutError as exc:  # asyncio's, aiohttp's ServerTimeoutError and ConnectionTimeoutError
        raise GatewayError(Reason.UPSTREAM_TIMEOUT, "The upstream provider did not answer in time.") from exc
    except aiohttp.ClientConnectorError as exc:
        raise GatewayError(Reason.UPSTREAM_UNAVAILABLE,
                           "The upstream provider could not be reached.") from exc
    except aiohttp.ClientConnectionError as exc:
        raise GatewayError(Reason.UPSTREAM_UNAVAILABLE,
                           "The connection to the upstream provider was lost.") from exc
    except aiohttp.ClientPayloadError as exc:
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider sent a malformed response.") from exc
    except aiohttp.ClientError as exc:
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream request failed.") from exc


class AiohttpResponse:
    """HttpResponse over an aiohttp.ClientResponse."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def read(self, limit: int | None = None) -> bytes:
        with transport_errors():
            if limit is None:
                return await self._response.read()
            parts: list[bytes] = []
            size = 0
            while size < limit and (chunk := await self._response.content.readany()):
                parts.append(chunk)
                size += len(chunk)
            return b"".join(parts)[:limit]

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            with transport_errors():
                chunk = await content.readany()
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class AiohttpTransport:
    """The production transport: one pooled aiohttp.ClientSession, created on first use."""

    def __init__(self, *, max_connections: int = 1024, keepalive_s: float = 30.0,
                 trust_env: bool = False) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._trust_env = trust_env  # honour HTTP(S)_PROXY variables when set
        self._session: aiohttp.ClientSession | None = None

    def _session_or_new(self) -> aiohttp.ClientSession:
        # Created lazily because an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300,
                                             keepalive_timeout=self._keepalive_s)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=self._trust_env,
                                                  raise_for_status=False)
        return self._session

    async def send(self, request: HttpRequest) -> HttpResponse:
        t = request.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, connect=t.connect, sock_connect=t.connect,
                                        sock_read=t.read_idle)
        with transport_errors():
            response = await self._session_or_new().request(
                request.method, request.url, data=request.body, headers=dict(request.headers),
                timeout=timeout, allow_redirects=False)
        return AiohttpResponse(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpClient:
    """The adapters' HTTP client: one per process, owned by whoever builds the adapters."""

    def __init__(self, transport: Transport | None = None) -> None:
        self._transport: Transport = transport if transport is not None else AiohttpTransport()

    @contextlib.asynccontextmanager
    async def open(self, request: HttpRequest) -> AsyncIterator[HttpResponse]:
        """Sends `request`; the response is released on a normal exit and its connection dropped
        on any other (an error, `aclose()` of a consuming generator, a cancelled task), so the
        upstream stops generating as soon as our consumer leaves."""
        response = await self._transport.send(request)
        try:
            yield response
        except BaseException:
            response.close()
            raise
        response.release()

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self._transport.close()


async def iter_sse(response: HttpResponse) -> AsyncIterator[SSEEvent]:
    """The response body as server-sent events, each yielded as soon as its last line arrived."""
    decoder = SSEDecoder()
    async for chunk in response.iter_chunks():
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.flush():
        yield event
