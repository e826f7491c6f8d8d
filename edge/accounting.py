"""Usage accounting of one request: token counts, exact cost, and the usage event.

The event leaves the request through `UsagePublisher` (JetStream, deduplicated by request id,
with a durable outbox), from a task the request does not wait for, so a slow NATS never delays
a response and a client disconnect never loses the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from google.protobuf import timestamp_pb2

from aggregator.events.v1 import usage_event_pb2 as ev
from aggregator.openai.v1 import chat_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import token_estimate
from services.analytics import bodies
from services.core import telemetry
from services.core.errors import GatewayError, internal_error
from services.core.money import decimal_str
from services.core.prices import of_candidate
from services.limits.limiter import COST, TOKENS, Admission, Limiter
from services.limits.policy import micro_usd

log = logging.getLogger(__name__)
THOUSAND = Decimal(1000)
# The model label of a request whose model the catalog did not resolve (docs/architecture.md §2.9).
UNKNOWN_MODEL = "unknown"


class Publisher(Protocol):
    async def publish(self, event: ev.UsageEvent) -> None: ...


def price(
    candidate: route_pb2.RouteCandidate, prompt_tokens: int, completion_tokens: int, images: int = 0,
    usage: chat_pb2.Usage | None = None,
) -> Decimal:
    """Exact cost in USD at the candidate's prices, every token class at its own (docs/pricing.md §1).

    Every adapter reports usage in OpenAI's convention: `prompt_tokens` counts every prompt token,
    with the ones read from the provider's cache (`cached_tokens`) and written to it
    (`cache_creation_tokens`, Anthropic's `cache_creation_input_tokens`) as parts of it, and
    `completion_tokens` counts reasoning tokens as a part. So the cost is
    (prompt - cached - cache_write) x input + cached x cached_input + cache_write x cache_write
    + (completion - reasoning) x output + reasoning x reasoning, per 1k, + images x per_image.
    Parts larger than their whole (a provider's inconsistent report) are capped, never negative."""
    prices = of_candidate(candidate)
    cached = cache_write = reasoning = 0
    if usage is not None:
        cached = min(max(usage.prompt_tokens_details.cached_tokens, 0), prompt_tokens)
        cache_write = min(max(usage.prompt_tokens_details.cache_creation_tokens, 0), prompt_tokens - cached)
        reasoning = min(max(usage.completion_tokens_details.reasoning_tokens, 0), completion_tokens)
    cost = (
        (prompt_tokens - cached - cache_write) * prices.input_per_1k
        + cached * prices.cached_input_per_1k
        + cache_write * prices.cache_write_per_1k
        + (completion_tokens - reasoning) * prices.output_per_1k
        + reasoning * prices.reasoning_per_1k
    ) / THOUSAND
    if images and prices.per_image is not None:
        cost += images * prices.per_image
    return cost


@dataclass
class RequestRecord:
    """What one request did, filled in as it runs."""

    request_id: str
    endpoint: str
    public_model: str
    stream: bool
    started: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)
    organization_id: str = ""
    api_key_id: str = ""
    candidate: route_pb2.RouteCandidate | None = None
    attempts: int = 0
    usage: chat_pb2.Usage | None = None
    content_events: int = 0  # upstream chunks that carried content: at least one token each
    content_chars: int = 0  # characters of generated output so far (a cut stream's estimate)
    request: Any = None  # the client's request: a cut stream's prompt is estimated from it
    default_provider: dict[str, Any] | None = None  # the organization's and key's provider defaults
    upstream_answered: bool = False  # the upstream accepted the request: its prompt is spent
    images: int = 0
    prompt_bytes: int = 0
    first_token_at: float | None = None
    admission: Admission | None = None  # what the rate limits counted (services/limits/limiter.py)
    headers: list[tuple[str, str]] = field(default_factory=list)  # response headers, sent once
    headers_sent: bool = False
    cache_hit: bool = False  # answered from the response cache (services/limits/response_cache.py)
    status: int = ev.REQUEST_STATUS_SUCCEEDED
    http_status: int = 200
    error_reason: str = ""
    error_type: str = ""  # the OpenAI error `type` of error_reason (services/core/errors.py)
    finish_reason: str = ""  # the first choice's, from the event that carried it
    user_id: str = ""
    client_ip: str = ""
    user_agent: str = ""
    # Bodies, only for an organization that opted in (services/analytics/bodies.py).
    store_bodies: bool = False
    request_body: bytes = b""
    response_chunks: list[bytes] = field(default_factory=list)

    def response_body(self) -> bytes:
        """What the client received, as JSON: the answer, or a stream's chunks as an array."""
        if not self.response_chunks:
            return b""
        if not self.stream and len(self.response_chunks) == 1:
            return bodies.bounded(self.response_chunks[0])
        return bodies.stream_body(self.response_chunks)

    @property
    def metric_model(self) -> str:
        """The model as a Prometheus label: the client's `model` only once routing found it in the
        catalog (a configured id or a route id), which is when a candidate exists; `unknown`
        otherwise. The raw string arrives before authentication, and each distinct label value is
        a series that lives as long as the process: a client must not be able to mint them."""
        return self.public_model if self.candidate is not None else UNKNOWN_MODEL

    def fail(self, error: GatewayError) -> None:
        """Marks the record failed with a GatewayError."""
        self.status = ev.REQUEST_STATUS_FAILED
        self.http_status = error.http_status
        self.error_reason = error.reason.value
        self.error_type = error.kind.openai_type

    def cancel(self) -> None:
        """Marks the record as cut short by the client (499, as nginx logs it)."""
        self.status = ev.REQUEST_STATUS_CANCELLED
        self.http_status = 499

    def estimated_prompt_tokens(self) -> int:
        """The prompt's tokens as the upstream's tokenizer would count them, about (docs/ledger.md
        §3); bytes/4 of the serialized request where the request is not a chat or completion."""
        kind = self.candidate.endpoint.kind if self.candidate is not None else ""
        if self.request is not None and hasattr(self.request, "DESCRIPTOR"):
            return token_estimate.prompt_tokens(self.request, kind)
        return math.ceil(self.prompt_bytes / 4)

    def to_event(self) -> ev.UsageEvent:
        usage = self.usage
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        else:
            # No usage from upstream (the stream was cut): bill what was generated, estimated
            # (docs/ledger.md §3). Once the upstream answered, it has consumed (and will bill) the
            # prompt.
            prompt = self.estimated_prompt_tokens() if self.upstream_answered else 0
            completion = token_estimate.completion_tokens(self.content_chars, self.content_events)
        cost = (
            price(self.candidate, prompt, completion, self.images, usage)
            if self.candidate is not None and not self.cache_hit
            else Decimal(0)
        )
        created = timestamp_pb2.Timestamp()
        created.FromNanoseconds(int(self.created_at * 1e9))
        end = time.monotonic()
        return ev.UsageEvent(
            request_id=self.request_id,
            organization_id=self.organization_id,
            api_key_id=self.api_key_id,
            endpoint=self.endpoint,
            public_model=self.public_model,
            provider=self.candidate.endpoint.provider if self.candidate else "",
            upstream_model=self.candidate.upstream_model if self.candidate else "",
            stream=self.stream,
            status=self.status,
            http_status=self.http_status,
            error_reason=self.error_reason,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=usage.prompt_tokens_details.cached_tokens if usage else 0,
            reasoning_tokens=usage.completion_tokens_details.reasoning_tokens if usage else 0,
            cache_creation_tokens=usage.prompt_tokens_details.cache_creation_tokens if usage else 0,
            cost_usd=decimal_str(cost) if cost else "0",
            latency_ms=int((end - self.started) * 1000),
            time_to_first_token_ms=int((self.first_token_at - self.started) * 1000)
            if self.first_token_at
            else 0,
            created_at=created,
            attempts=self.attempts,
            images=self.images,
            cache_hit=self.cache_hit,
            finish_reason=self.finish_reason,
            client_ip=self.client_ip,
            user_agent=self.user_agent,
            user_id=self.user_id,
            request_body=self.request_body,
            response_body=self.response_body() if self.store_bodies else b"",
        )


class UsageRecorder:
    """Finishes request records: metrics now, the usage event in the background."""

    def __init__(self, publisher: Publisher | None, limiter: Limiter | None = None) -> None:
        self._publisher = publisher
        self._limiter = limiter  # settles estimated rate-limit windows to the true amounts
        self._pending: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def recording(self, record: RequestRecord) -> Iterator[RequestRecord]:
        """Finishes `record` whatever happens inside: failed on a GatewayError, failed as an
        internal error (500) on any other exception (never recorded as a success), cancelled when
        the client goes away (CancelledError, or GeneratorExit in a closed stream)."""
        try:
            yield record
        except GatewayError as error:
            record.fail(error)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            record.cancel()
            raise
        except Exception:
            record.fail(internal_error())
            raise
        finally:
            self.finish(record)

    def finish(self, record: RequestRecord) -> ev.UsageEvent:
        event = record.to_event()
        status = ev.RequestStatus.Name(event.status).removeprefix("REQUEST_STATUS_").lower()
        model = record.metric_model
        telemetry.REQUESTS.labels(record.endpoint, model, event.provider, status).inc()
        telemetry.LATENCY.labels(record.endpoint).observe(event.latency_ms / 1000)
        if event.time_to_first_token_ms:
            telemetry.TTFT.labels(model).observe(event.time_to_first_token_ms / 1000)
        telemetry.TOKENS.labels(model, "prompt").inc(event.prompt_tokens)
        telemetry.TOKENS.labels(model, "completion").inc(event.completion_tokens)
        telemetry.COST.labels(model).inc(float(Decimal(event.cost_usd)))
        if record.error_reason:
            # Reasons and types come from the fixed table of services/core/errors.py: bounded.
            telemetry.ERRORS.labels(record.error_reason, record.error_type).inc()
        admission = record.admission
        if self._limiter is not None and admission is not None and (admission.used or admission.generations):
            # A cache hit consumed nothing upstream: its token windows go back to zero.
            tokens = 0 if record.cache_hit else event.prompt_tokens + event.completion_tokens
            cost = Decimal(event.cost_usd)
            self._limiter.settle_soon(admission, {TOKENS: tokens, COST: micro_usd(cost)}, cost, tokens)
        if record.organization_id and self._publisher is not None:
            task = asyncio.get_running_loop().create_task(self._publish(event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return event

    async def _publish(self, event: ev.UsageEvent) -> None:
        try:
            await self._publisher.publish(event)  # type: ignore[union-attr]
        except Exception:  # the publisher keeps its own outbox; this is a last resort log
            log.exception("usage event %s could not be recorded", event.request_id)

    async def drain(self) -> None:
        """Waits for events still being published (graceful stop)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
