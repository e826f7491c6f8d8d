"""The request pipeline with fake services: keys, model permissions, candidate fail-over, usage."""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from prometheus_client import REGISTRY

from aggregator.adapter.v1 import adapter_service_pb2 as adapter_pb
from aggregator.auth.v1 import auth_service_pb2 as auth_pb
from aggregator.openai.v1 import chat_pb2, embedding_pb2
from aggregator.routing.v1 import route_pb2
from aggregator.routing.v1 import routing_service_pb2 as routing_pb
from edge.accounting import RequestRecord, UsageRecorder
from edge.health import CircuitBreakers
from edge.pipeline import Pipeline, bearer_key, check_model_allowed
from services.core import telemetry
from services.core.config import Resilience
from services.core.errors import GatewayError, Reason

KEY = "sk-test-123"


# --- bearer_key and check_model_allowed ----------------------------------------------------------

@pytest.mark.parametrize(("header", "key"), [
    ("Bearer sk-1", "sk-1"), ("bearer sk-1", "sk-1"), ("BEARER sk-1", "sk-1"), ("BeArEr sk-1", "sk-1"),
    ("Bearer   sk-1  ", "sk-1"),
])
def test_bearer_key(header: str, key: str) -> None:
    assert bearer_key(header) == key


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "sk-1",
                                    "Bearersk-1", "Token sk-1"])
def test_bearer_key_missing(header: str | None) -> None:
    with pytest.raises(GatewayError) as info:
        bearer_key(header)
    assert info.value.reason is Reason.MISSING_API_KEY and info.value.http_status == 401
    assert "Authorization: Bearer" in info.value.message


def principal(allowed: list[str] | None = None) -> auth_pb.Principal:
    result = auth_pb.Principal(organization_id="org-1", api_key_id="key-1", role="member",
                               permissions=["inference", "read:models", "read:usage"])
    if allowed is not None:
        result.allowed_models.CopyFrom(struct_pb2.ListValue())
        result.allowed_models.extend(allowed)
    return result


def test_every_model_allowed_without_a_list() -> None:
    check_model_allowed(principal(), ["anything", "else"])


def test_models_on_the_list_are_allowed() -> None:
    check_model_allowed(principal(["a", "b"]), ["a", "b"])


@pytest.mark.parametrize(("allowed", "models", "denied"), [
    (["a"], ["b"], "b"), (["a"], ["a", "fallback"], "fallback"), ([], ["a"], "a"),
])
def test_models_off_the_list_are_denied(allowed: list[str], models: list[str], denied: str) -> None:
    with pytest.raises(GatewayError) as info:
        check_model_allowed(principal(allowed), models)
    error = info.value
    assert error.reason is Reason.MODEL_NOT_ALLOWED and error.param == "model" and error.http_status == 403
    assert f"`{denied}`" in error.message


# --- fake services -------------------------------------------------------------------------------

def candidate(provider: str) -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(public_model="gpt-4o-mini", upstream_model=f"{provider}-model",
                                    input_per_1k="0.001", output_per_1k="0.002", model_type="chat",
                                    endpoint=route_pb2.Endpoint(provider=provider, kind="openai"))


def event(body: str, content: bool = True, usage: chat_pb2.Usage | None = None) -> adapter_pb.ChatResponse:
    return adapter_pb.ChatResponse(body=body.encode(), has_content=content, usage=usage)


class Auth:
    def __init__(self, who: auth_pb.Principal) -> None:
        self.who, self.keys = who, []  # type: ignore[var-annotated]

    async def Authenticate(self, request: auth_pb.AuthenticateRequest,
                           **_: Any) -> auth_pb.AuthenticateResponse:
        self.keys.append(request.api_key)
        return auth_pb.AuthenticateResponse(principal=self.who)


class Routing:
    def __init__(self, providers: list[str]) -> None:
        self.providers, self.requests = providers, []  # type: ignore[var-annotated]

    async def ResolveRoute(self, request: routing_pb.ResolveRouteRequest,
                           **_: Any) -> routing_pb.ResolveRouteResponse:
        self.requests.append(request)
        return routing_pb.ResolveRouteResponse(candidates=[candidate(p) for p in self.providers])


@dataclass
class Script:
    """What one provider does: some events, then optionally an error."""

    events: list[adapter_pb.ChatResponse] = field(default_factory=list)
    error: BaseException | None = None


class Adapter:
    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = scripts
        self.calls: list[adapter_pb.ChatRequest] = []
        self.closed: list[str] = []
        self.embeds: list[adapter_pb.EmbedRequest] = []

    async def Chat(self, request: adapter_pb.ChatRequest, **_: Any) -> AsyncIterator[adapter_pb.ChatResponse]:
        provider = request.candidate.endpoint.provider
        self.calls.append(request)
        script = self.scripts[provider]
        try:
            for item in script.events:
                yield item
            if script.error is not None:
                raise script.error
        finally:
            self.closed.append(provider)

    async def Embed(self, request: adapter_pb.EmbedRequest, **_: Any) -> adapter_pb.EmbedResponse:
        self.embeds.append(request)
        script = self.scripts[request.candidate.endpoint.provider]
        if script.error is not None:
            raise script.error
        return adapter_pb.EmbedResponse(body=b"{}", usage=chat_pb2.Usage(prompt_tokens=5, total_tokens=5))


@dataclass
class Clients:
    auth: Auth
    routing: Routing
    adapter: Adapter


class Context:
    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = pairs
        self.sent: list[tuple[str, str]] = []  # the response headers

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.pairs

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.sent.extend(metadata)


AUTHORIZED = Context(("authorization", f"Bearer {KEY}"), ("x-request-id", "req-9"))


def chat_request(**extra: Any) -> chat_pb2.ChatCompletionRequest:
    data = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}
    return json_format.ParseDict(data, chat_pb2.ChatCompletionRequest())


def make(scripts: dict[str, Script], who: auth_pb.Principal | None = None, *,
         breakers: CircuitBreakers | None = None,
         resilience: Resilience | None = None) -> tuple[Pipeline, Clients]:
    clients = Clients(Auth(who or principal()), Routing(list(scripts)), Adapter(scripts))
    pipeline = Pipeline(clients, UsageRecorder(None), breakers=breakers,  # type: ignore[arg-type]
                        resilience=resilience)
    return pipeline, clients


def new_record() -> RequestRecord:
    return RequestRecord(request_id="req-9", endpoint="chat.completions", public_model="gpt-4o-mini",
                         stream=True)


async def run_chat(pipeline: Pipeline, record: RequestRecord,
                   request: chat_pb2.ChatCompletionRequest | None = None,
                   context: Context = AUTHORIZED) -> list[bytes]:
    return [e.body async for e in pipeline.chat(request or chat_request(), context, record)]


def failures(provider: str, reason: str) -> float:
    return REGISTRY.get_sample_value("aggregator_upstream_failures_total",
                                     {"provider": provider, "reason": reason}) or 0.0


# --- chat ----------------------------------------------------------------------------------------

async def test_first_candidate_retriable_failure_moves_to_the_second() -> None:
    pipeline, clients = make({
        "p1": Script(error=GatewayError(Reason.UPSTREAM_UNAVAILABLE, "p1 down")),
        "p2": Script([event("a"), event("b")]),
    })
    before = failures("p1", "UPSTREAM_UNAVAILABLE")
    record = new_record()
    assert await run_chat(pipeline, record) == [b"a", b"b"]
    assert [c.candidate.endpoint.provider for c in clients.adapter.calls] == ["p1", "p2"]
    assert record.attempts == 2 and record.candidate.endpoint.provider == "p2"  # type: ignore[union-attr]
    assert sorted(clients.adapter.closed) == ["p1", "p2"]
    assert failures("p1", "UPSTREAM_UNAVAILABLE") == before + 1
    call = clients.adapter.calls[1]
    assert (call.request_id, call.request.model) == ("req-9", "gpt-4o-mini")
    assert 590_000 < call.timeout_ms <= 600_000  # what is left of the request's deadline (600 s)


async def test_empty_stream_counts_as_a_failure_and_moves_on() -> None:
    pipeline, clients = make({"p1": Script(), "p2": Script([event("x")])})
    assert await run_chat(pipeline, new_record()) == [b"x"]
    assert len(clients.adapter.calls) == 2


@pytest.mark.parametrize("reason", [Reason.UPSTREAM_BAD_REQUEST, Reason.CONTEXT_LENGTH_EXCEEDED,
                                    Reason.INTERNAL])
async def test_non_retriable_error_is_raised_at_once(reason: Reason) -> None:
    error = GatewayError(reason, "no")
    pipeline, clients = make({"p1": Script(error=error), "p2": Script([event("never")])})
    with pytest.raises(GatewayError) as info:
        await run_chat(pipeline, new_record())
    assert info.value is error
    assert [c.candidate.endpoint.provider for c in clients.adapter.calls] == ["p1"]


async def test_all_candidates_failing_raises_the_last_error() -> None:
    last = GatewayError(Reason.UPSTREAM_TIMEOUT, "p3 timed out")
    pipeline, clients = make({
        "p1": Script(error=GatewayError(Reason.UPSTREAM_RATE_LIMITED, "p1 busy", retry_after=3)),
        "p2": Script(),
        "p3": Script(error=last),
    })
    record = new_record()
    with pytest.raises(GatewayError) as info:
        await run_chat(pipeline, record)
    assert info.value is last
    assert record.attempts == 3 and len(clients.adapter.calls) == 3


async def test_all_candidates_empty_is_an_upstream_error() -> None:
    pipeline, _ = make({"p1": Script(), "p2": Script()})
    with pytest.raises(GatewayError) as info:
        await run_chat(pipeline, new_record())
    assert info.value.reason is Reason.UPSTREAM_ERROR


async def test_no_candidates_is_upstream_unavailable() -> None:
    pipeline, _ = make({})
    with pytest.raises(GatewayError) as info:
        await run_chat(pipeline, new_record())
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE


async def test_failure_after_the_first_event_is_not_retried() -> None:
    error = GatewayError(Reason.UPSTREAM_ERROR, "cut")
    pipeline, clients = make({"p1": Script([event("a")], error=error), "p2": Script([event("b")])})
    seen: list[bytes] = []
    with pytest.raises(GatewayError) as info:
        async for item in pipeline.chat(chat_request(), AUTHORIZED, new_record()):
            seen.append(item.body)
    assert info.value is error and seen == [b"a"]
    assert len(clients.adapter.calls) == 1


async def test_usage_and_first_token_are_recorded() -> None:
    usage = chat_pb2.Usage(prompt_tokens=12, completion_tokens=3, total_tokens=15)
    pipeline, _ = make({"p1": Script([event("role", content=False), event("Hel"), event("lo"),
                                      event("usage", content=False, usage=usage)])})
    record = new_record()
    request = chat_request()
    started = time.monotonic()
    bodies = await run_chat(pipeline, record, request)
    assert bodies == [b"role", b"Hel", b"lo", b"usage"]
    assert record.usage == usage
    assert record.content_events == 2
    assert record.first_token_at is not None and started <= record.first_token_at <= time.monotonic()
    assert record.prompt_bytes == request.ByteSize()
    assert (record.organization_id, record.api_key_id) == ("org-1", "key-1")
    event_out = record.to_event()
    assert (event_out.prompt_tokens, event_out.completion_tokens, event_out.provider) == (12, 3, "p1")
    assert event_out.cost_usd == "0.000018"


async def test_first_token_time_is_the_first_content_event() -> None:
    pipeline, _ = make({"p1": Script([event("role", content=False), event("a"), event("b")])})
    record = new_record()
    times: list[float | None] = []
    async for _ in pipeline.chat(chat_request(), AUTHORIZED, record):
        times.append(record.first_token_at)
    assert times[0] is None and times[1] is not None and times[2] == times[1]


async def test_consumer_leaving_early_closes_the_adapter_stream() -> None:
    pipeline, clients = make({"p1": Script([event("a"), event("b"), event("c")])})
    events = pipeline.chat(chat_request(), AUTHORIZED, new_record())
    assert (await anext(events)).body == b"a"
    await events.aclose()  # type: ignore[attr-defined]
    assert clients.adapter.closed == ["p1"]


async def test_authentication_and_routing_inputs() -> None:
    pipeline, clients = make({"p1": Script([event("a")])})
    await run_chat(pipeline, new_record(), chat_request(models=["fallback-1", "fallback-2"]))
    assert clients.auth.keys == [KEY]
    (routed,) = clients.routing.requests
    assert (routed.model, list(routed.fallback_models), routed.model_type) == (
        "gpt-4o-mini", ["fallback-1", "fallback-2"], "chat")


async def test_missing_key_fails_before_any_service_call() -> None:
    pipeline, clients = make({"p1": Script([event("a")])})
    with pytest.raises(GatewayError) as info:
        await run_chat(pipeline, new_record(), context=Context(("x-request-id", "r")))
    assert info.value.reason is Reason.MISSING_API_KEY
    assert clients.auth.keys == [] and clients.routing.requests == []


async def test_disallowed_fallback_fails_before_routing() -> None:
    pipeline, clients = make({"p1": Script([event("a")])}, who=principal(["gpt-4o-mini"]))
    with pytest.raises(GatewayError) as info:
        await run_chat(pipeline, new_record(), chat_request(models=["other"]))
    assert info.value.reason is Reason.MODEL_NOT_ALLOWED and "`other`" in info.value.message
    assert clients.routing.requests == []


async def test_invalid_request_fails_before_routing() -> None:
    pipeline, clients = make({"p1": Script([event("a")])})
    with pytest.raises(GatewayError) as info:
        await run_chat(pipeline, new_record(), chat_request(temperature=3))
    assert info.value.param == "temperature"
    assert clients.routing.requests == []


# --- embed and start -----------------------------------------------------------------------------

def embedding_request() -> embedding_pb2.EmbeddingRequest:
    return json_format.ParseDict({"model": "embed", "input": "hello"}, embedding_pb2.EmbeddingRequest())


async def test_embed_fails_over_and_records_usage() -> None:
    busy = GatewayError(Reason.UPSTREAM_OVERLOADED, "busy")
    pipeline, clients = make({"p1": Script(error=busy), "p2": Script()})
    record = new_record()
    answer = await pipeline.embed(embedding_request(), AUTHORIZED, record)
    assert answer.body == b"{}"
    assert [r.candidate.endpoint.provider for r in clients.adapter.embeds] == ["p1", "p2"]
    assert clients.routing.requests[0].model_type == "embedding"
    assert record.attempts == 2 and record.usage.prompt_tokens == 5  # type: ignore[union-attr]
    assert record.first_token_at is not None


async def test_embed_non_retriable_error_is_raised_at_once() -> None:
    error = GatewayError(Reason.UPSTREAM_BAD_REQUEST, "bad input")
    pipeline, clients = make({"p1": Script(error=error), "p2": Script()})
    with pytest.raises(GatewayError) as info:
        await pipeline.embed(embedding_request(), AUTHORIZED, new_record())
    assert info.value is error and len(clients.adapter.embeds) == 1


def test_start_uses_the_envoy_request_id_or_makes_one() -> None:
    pipeline, _ = make({})

    def start(context: Context) -> tuple[RequestRecord, str]:
        record = pipeline.start(context, "chat.completions", "m", True)
        return record, telemetry.request_id_var.get()

    record, current = contextvars.copy_context().run(start, AUTHORIZED)
    assert record.request_id == "req-9" == current
    assert (record.endpoint, record.public_model, record.stream) == ("chat.completions", "m", True)
    record, current = contextvars.copy_context().run(start, Context())
    assert len(record.request_id) == 32 and record.request_id == current


# --- resilience (docs/resilience.md) ---------------------------------------------------------------

async def test_a_failure_after_the_role_chunk_fails_over_invisibly() -> None:
    pipeline, clients = make({
        "p1": Script([event("role", content=False)], error=GatewayError(Reason.UPSTREAM_ERROR, "cut")),
        "p2": Script([event("role2", content=False), event("hi")]),
    })
    record = new_record()
    context = Context(*AUTHORIZED.pairs)
    assert await run_chat(pipeline, record, context=context) == [b"role2", b"hi"]
    assert ("x-aggregator-attempts", "2") in context.sent and ("x-aggregator-provider", "p2") in context.sent
    assert len(clients.adapter.calls) == 2


async def test_a_finish_without_content_ends_the_hold() -> None:
    finished = adapter_pb.ChatResponse(body=b"stop", finish_reason="stop")
    pipeline, clients = make({"p1": Script([event("role", content=False), finished,
                                            event("tail", content=False)]), "p2": Script([event("x")])})
    assert await run_chat(pipeline, new_record()) == [b"role", b"stop", b"tail"]
    assert len(clients.adapter.calls) == 1


class Breakers(CircuitBreakers):
    """Records what the pipeline reports through the seam."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, bool, bool, int]] = []

    async def record(self, candidate: route_pb2.RouteCandidate, *, ok: bool, ttft_s: float | None,
                     output_tokens: int, duration_s: float) -> None:
        assert duration_s >= 0
        self.records.append((candidate.endpoint.provider, ok, ttft_s is not None, output_tokens))


async def test_every_attempt_is_recorded_once() -> None:
    usage = chat_pb2.Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12)
    breakers = Breakers()
    pipeline, _ = make({"p1": Script(error=GatewayError(Reason.UPSTREAM_UNAVAILABLE, "down")),
                        "p2": Script([event("a"), event("u", content=False, usage=usage)])},
                       breakers=breakers)
    await run_chat(pipeline, new_record())
    assert breakers.records == [("p1", False, False, 0), ("p2", True, True, 7)]


async def test_a_cut_after_content_is_recorded_as_not_ok() -> None:
    breakers = Breakers()
    pipeline, _ = make({"p1": Script([event("abcdefgh")], error=GatewayError(Reason.UPSTREAM_ERROR, "cut"))},
                       breakers=breakers)
    with pytest.raises(GatewayError):
        await run_chat(pipeline, new_record())
    assert breakers.records == [("p1", False, True, 1)]  # the estimate of what came: 1 content event


async def test_retries_on_one_candidate_then_the_next() -> None:
    pipeline, clients = make({"p1": Script(error=GatewayError(Reason.UPSTREAM_ERROR, "boom")),
                              "p2": Script([event("ok")])},
                             resilience=Resilience(retries=2, backoff_initial_s=0.001, backoff_max_s=0.002))
    record = new_record()
    before = REGISTRY.get_sample_value("aggregator_upstream_retries_total", {"provider": "p1"}) or 0.0
    assert await run_chat(pipeline, record) == [b"ok"]
    assert [c.candidate.endpoint.provider for c in clients.adapter.calls] == ["p1", "p1", "p1", "p2"]
    assert REGISTRY.get_sample_value("aggregator_upstream_retries_total", {"provider": "p1"}) == before + 2
    assert record.attempts == 4


async def test_a_spent_deadline_is_a_504() -> None:
    pipeline, clients = make({"p1": Script([event("x")])})
    context = Context(*AUTHORIZED.pairs, ("x-aggregator-timeout-ms", "500"))
    record = new_record()
    record.started -= 1  # a request that arrived a second ago
    with pytest.raises(GatewayError) as info:
        await run_chat(pipeline, record, context=context)
    assert info.value.reason is Reason.UPSTREAM_TIMEOUT and info.value.http_status == 504
    assert not clients.adapter.calls


async def test_a_grpc_callers_own_deadline_shortens_the_requests() -> None:
    pipeline, clients = make({"p1": Script([event("x")])})
    context = Context(*AUTHORIZED.pairs)
    context.time_remaining = lambda: 2.0  # type: ignore[attr-defined]
    await run_chat(pipeline, new_record(), context=context)
    assert 1_000 < clients.adapter.calls[0].timeout_ms <= 2_000  # not the configured 600 s
