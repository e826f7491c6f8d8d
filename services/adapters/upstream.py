"""How an adapter calls its provider: the part of every exchange that does not depend on the
provider's format, written once.

    UpstreamClient.open()      POST {base_url}{path} with the content type, Accept, our request id
                               as `X-Request-Id`, the provider's credentials and the timeouts; a
                               non-2xx answer becomes the GatewayError of the one error table
                               (`upstream_errors`), decoded from the provider's error body
    UpstreamClient.exchange()  the same for a whole (unstreamed) answer: its bytes and latency
    read_answer()              the bytes of a whole answer, refused past MAX_ANSWER_BYTES
    stream_failure()           the GatewayError of an error event inside a stream
    elapsed_ms()               the latency every answer reports

Every request is one OpenTelemetry CLIENT span (`POST`, with the provider, model, host and
status; never the URL's query or a header) and one observation of the provider's response time
(`aggregator_upstream_response_seconds`, docs/observability.md).

What differs by provider is configuration, not code: the credentials scheme, whether a key is
required, fixed headers (Anthropic's version), and the error body's decoder (`<kind>_wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from aggregator.routing.v1 import route_pb2
from services.adapters.credentials import AuthScheme, CredentialResolver
from services.adapters.http import MAX_ERROR_BODY_BYTES, HttpClient, HttpRequest, HttpResponse, Timeouts
from services.adapters.openai_translate import Target
from services.adapters.upstream_errors import UpstreamFailure, retry_after_seconds, to_gateway_error
from services.core import telemetry
from services.core.errors import GatewayError, response_too_large
from services.core.limits import MAX_ANSWER_BYTES

JSON = "application/json"


class AdapterCall(Protocol):
    """What every adapter call carries beside its request (ChatRequest, EmbedRequest, ...)."""

    candidate: route_pb2.RouteCandidate
    request_id: str
    timeout_ms: int


class ErrorBody(Protocol):
    """A provider's error body, decoded (`<kind>_wire`)."""

    def failure(self, status: int, retry_after: float | None = None) -> UpstreamFailure:
        """The provider-neutral failure for the error table."""
        ...


class StreamError(ErrorBody, Protocol):
    """An error body that can also arrive inside a stream, where there is no HTTP status."""

    def status_hint(self) -> int:
        """The HTTP status the error stands for."""
        ...


def elapsed_ms(started: float) -> int:
    """Milliseconds since `started` (a `time.monotonic()` reading)."""
    return int((time.monotonic() - started) * 1000)


async def read_answer(response: HttpResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The whole body of a successful answer; an answer over `limit` bytes is a 502 naming the limit
    (docs/edge.md, "Size limits"), refused before reading it when its Content-Length says so."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise response_too_large(limit)
    raw = await response.read(limit + 1)
    if len(raw) > limit:
        raise response_too_large(limit)
    return raw


def stream_failure(error: StreamError, target: Target) -> GatewayError:
    """The GatewayError a client sees for an error event inside `target`'s stream."""
    return to_gateway_error(error.failure(error.status_hint()), provider=target.provider,
                            upstream_model=target.upstream_model)


@dataclass(frozen=True, slots=True)
class UpstreamClient:
    """One provider kind's way to its endpoints over the shared HttpClient."""

    http: HttpClient
    credentials: CredentialResolver
    scheme: AuthScheme
    decode_error: Callable[[bytes], ErrorBody]
    key_required: bool = True  # a local OpenAI-compatible server may need none
    fixed_headers: Mapping[str, str] = field(default_factory=dict)
    default_timeout_s: float = 120.0
    connect_timeout_s: float = 10.0

    def request(self, call: AdapterCall, path: str, body: bytes, *, stream: bool,
                content_type: str = JSON) -> HttpRequest:
        """The HTTP request of `call` to `{base_url}{path}`."""
        candidate = call.candidate
        headers = {"Content-Type": content_type, **self.fixed_headers,
                   "Accept": "text/event-stream" if stream else JSON}
        if call.request_id:
            headers["X-Request-Id"] = call.request_id
        headers.update(self.credentials.auth_headers(candidate.endpoint, self.scheme,
                                                     key_required=self.key_required))
        # `timeout_ms` is what is left of the request's deadline (docs/resilience.md §3): it bounds
        # the whole exchange, stream or not; silence is bounded by the idle timeout
        # (`default_timeout_s`). Without one, a stream is bounded by silence only.
        budget_s = call.timeout_ms / 1000.0 if call.timeout_ms else None
        idle_s = min(self.default_timeout_s, budget_s) if budget_s else self.default_timeout_s
        timeouts = Timeouts(connect=min(self.connect_timeout_s, idle_s), read_idle=idle_s,
                            total=budget_s if budget_s else (None if stream else idle_s))
        url = candidate.endpoint.base_url.rstrip("/") + path
        return HttpRequest("POST", url, headers, body, timeouts)

    def health_request(self, endpoint: route_pb2.Endpoint, path: str, timeout_s: float) -> HttpRequest:
        """An active health probe, `GET {base_url}{path}` with the same fixed and auth headers as
        every call and no body, bounded by `timeout_s` whole (docs/routing.md §5)."""
        headers = {**self.fixed_headers, "Accept": JSON}
        headers.update(self.credentials.auth_headers(endpoint, self.scheme, key_required=self.key_required))
        return HttpRequest("GET", endpoint.base_url.rstrip("/") + path, headers, b"",
                           Timeouts(connect=timeout_s, read_idle=timeout_s, total=timeout_s))

    async def failure(self, response: HttpResponse, candidate: route_pb2.RouteCandidate) -> GatewayError:
        """The GatewayError of a non-2xx answer, from its (size-limited) body and `Retry-After`."""
        raw = await response.read(MAX_ERROR_BODY_BYTES)
        failure = self.decode_error(raw).failure(response.status, retry_after_seconds(response.headers))
        return to_gateway_error(failure, provider=candidate.endpoint.provider,
                                upstream_model=candidate.upstream_model)

    @staticmethod
    def _span(call: AdapterCall, request: HttpRequest) -> Span:
        """The CLIENT span of one upstream request (no query string, no headers). Not made current:
        nothing runs under it, and it stays open across the caller's yields. Without a tracer
        provider none is made (INVALID_SPAN's methods do nothing; docs/observability.md §4)."""
        url = urlsplit(request.url)
        return telemetry.TRACER.start_span(request.method, kind=SpanKind.CLIENT, attributes={
            "http.request.method": request.method, "server.address": url.hostname or "",
            "url.path": url.path, "aggregator.provider": call.candidate.endpoint.provider,
            "aggregator.upstream_model": call.candidate.upstream_model,
            "aggregator.request_id": call.request_id})

    @contextlib.asynccontextmanager
    async def open(self, call: AdapterCall, path: str, body: bytes, *, stream: bool = False,
                   content_type: str = JSON) -> AsyncIterator[HttpResponse]:
        """Sends the request of `call` and yields its successful response (see HttpClient.open for
        how the connection is released or dropped); raises the mapped error of a failed one."""
        request = self.request(call, path, body, stream=stream, content_type=content_type)
        provider = call.candidate.endpoint.provider
        span = self._span(call, request) if telemetry.tracing_on() else trace.INVALID_SPAN
        started = time.monotonic()
        observed = False

        def observe(outcome: str) -> None:  # once: at the response headers or a transport failure
            nonlocal observed
            if not observed:
                observed = True
                telemetry.UPSTREAM_LATENCY.labels(provider, outcome).observe(time.monotonic() - started)

        try:
            async with self.http.open(request) as response:
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 300:
                    observe("error")
                    raise await self.failure(response, call.candidate)
                observe("ok")
                yield response
        except (GeneratorExit, asyncio.CancelledError):
            span.set_attribute("aggregator.cancelled", True)  # our caller left: not the provider's fault
            raise
        except BaseException as error:
            if isinstance(error, GatewayError):
                observe("error")
                span.set_attribute("aggregator.error.reason", error.reason.value)
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            span.end()

    async def exchange(self, call: AdapterCall, path: str, body: bytes, *,
                       content_type: str = JSON) -> tuple[bytes, int]:
        """One whole answer and its latency in milliseconds (embeddings, images)."""
        started = time.monotonic()
        async with self.open(call, path, body, content_type=content_type) as response:
            raw = await read_answer(response)
        return raw, elapsed_ms(started)
