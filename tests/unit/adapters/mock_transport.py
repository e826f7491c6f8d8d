"""A Transport without a network: canned responses for the adapters' unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import orjson
from multidict import CIMultiDict

from services.adapters.http import HttpRequest


@dataclass
class CannedResponse:
    """An HttpResponse whose body is a list of reads; records how it was let go."""

    status: int = 200
    chunks: list[bytes] = field(default_factory=list)
    header_items: Mapping[str, str] = field(default_factory=dict)
    released: bool = False
    closed: bool = False
    reads: int = 0  # chunks handed out so far

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(self.header_items)

    async def read(self, limit: int | None = None) -> bytes:
        body = b"".join(self.chunks)
        return body if limit is None else body[:limit]

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.reads += 1
            yield chunk

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def json_response(obj: object, status: int = 200, headers: Mapping[str, str] | None = None) -> CannedResponse:
    return CannedResponse(status=status, chunks=[orjson.dumps(obj)], header_items=headers or {})


def sse_response(*payloads: object, done: bool = True) -> CannedResponse:
    """One read per event, `data: [DONE]` last."""
    chunks = [b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads]
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return CannedResponse(chunks=chunks, header_items={"Content-Type": "text/event-stream"})


class MockTransport:
    """Answers each request with `handler(request)` and keeps what was sent."""

    def __init__(self, handler: Callable[[HttpRequest], CannedResponse]) -> None:
        self.handler = handler
        self.sent: list[HttpRequest] = []
        self.responses: list[CannedResponse] = []
        self.closed = False

    async def send(self, request: HttpRequest) -> CannedResponse:
        self.sent.append(request)
        response = self.handler(request)
        self.responses.append(response)
        return response

    async def close(self) -> None:
        self.closed = True
