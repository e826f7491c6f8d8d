"""Exact prices and the usage event of one request."""

from __future__ import annotations

import logging
import secrets
from decimal import Decimal

import pytest

from aggregator.events.v1 import usage_event_pb2 as ev
from aggregator.openai.v1 import chat_pb2
from aggregator.routing.v1 import route_pb2
from edge.accounting import RequestRecord, UsageRecorder, price
from services.core import telemetry
from services.core.errors import GatewayError, Reason


def candidate(price_in: str = "0.00015", price_out: str = "0.0006") -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(public_model="gpt-4o-mini", upstream_model="gpt-4o-mini-2024",
                                    input_per_1k=price_in, output_per_1k=price_out,
                                    endpoint=route_pb2.Endpoint(provider="openai", kind="openai"))


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0,
          creation: int = 0) -> chat_pb2.Usage:
    return chat_pb2.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        prompt_tokens_details=chat_pb2.PromptTokensDetails(cached_tokens=cached,
                                                           cache_creation_tokens=creation),
        completion_tokens_details=chat_pb2.CompletionTokensDetails(reasoning_tokens=reasoning))


def record(**fields: object) -> RequestRecord:
    base = RequestRecord(request_id="req-1", endpoint="chat.completions", public_model="gpt-4o-mini",
                         stream=True,
                         started=100.0, created_at=1_700_000_000.25, organization_id="org", api_key_id="key")
    for name, value in fields.items():
        setattr(base, name, value)
    return base


@pytest.mark.parametrize(("prompt", "completion", "cost"), [
    (1000, 2000, Decimal("0.00135")),
    (1, 0, Decimal("0.00000015")),
    (0, 0, Decimal("0")),
    (1_234_567, 7_654_321, Decimal("4.77777765")),
])
def test_price_is_exact(prompt: int, completion: int, cost: Decimal) -> None:
    result = price(candidate(), prompt, completion)
    assert isinstance(result, Decimal) and result == cost


def test_price_does_not_touch_binary_floats() -> None:
    # 0.1 + 0.2 is the classic float trap; here it must be exactly 0.3.
    assert price(candidate("0.1", "0.2"), 1000, 1000) == Decimal("0.3")


def test_event_with_usage() -> None:
    rec = record(candidate=candidate(), attempts=2,
                 usage=usage(1000, 2000, cached=300, reasoning=50, creation=7),
                 content_events=99, prompt_bytes=99_999, first_token_at=100.25)
    event = rec.to_event()
    assert (event.request_id, event.organization_id, event.api_key_id) == ("req-1", "org", "key")
    assert (event.endpoint, event.public_model) == ("chat.completions", "gpt-4o-mini")
    assert (event.provider, event.upstream_model, event.stream, event.attempts) == (
        "openai", "gpt-4o-mini-2024", True, 2)
    # Upstream usage wins over the estimates.
    assert (event.prompt_tokens, event.completion_tokens) == (1000, 2000)
    assert (event.cached_tokens, event.reasoning_tokens, event.cache_creation_tokens) == (300, 50, 7)
    assert event.cost_usd == "0.00135"
    assert (event.status, event.http_status, event.error_reason) == (ev.REQUEST_STATUS_SUCCEEDED, 200, "")
    assert event.time_to_first_token_ms == 250
    assert event.latency_ms >= 0
    assert abs(event.created_at.ToNanoseconds() - 1_700_000_000_250_000_000) < 1000  # float seconds


def test_event_without_usage_estimates_what_was_generated() -> None:
    rec = record(candidate=candidate(), content_events=7, prompt_bytes=4001, first_token_at=100.5,
                 upstream_answered=True)
    event = rec.to_event()
    assert (event.prompt_tokens, event.completion_tokens) == (1001, 7)
    assert event.cost_usd == str(price(candidate(), 1001, 7)) == "0.00015435"
    assert (event.cached_tokens, event.reasoning_tokens, event.cache_creation_tokens) == (0, 0, 0)
    assert event.time_to_first_token_ms == 500


def test_a_prompt_the_upstream_accepted_is_billed_even_with_nothing_generated() -> None:
    event = record(candidate=candidate(), prompt_bytes=4000, upstream_answered=True).to_event()
    assert (event.prompt_tokens, event.completion_tokens) == (1000, 0)
    assert event.cost_usd == str(price(candidate(), 1000, 0))


def test_event_without_usage_and_nothing_generated_costs_nothing() -> None:
    event = record(candidate=candidate(), prompt_bytes=4000).to_event()
    assert (event.prompt_tokens, event.completion_tokens, event.cost_usd) == (0, 0, "0")
    assert event.time_to_first_token_ms == 0


def test_failure_marking() -> None:
    rec = record(candidate=candidate(), attempts=3)
    rec.fail(GatewayError(Reason.UPSTREAM_TIMEOUT, "timed out"))
    event = rec.to_event()
    assert (event.status, event.http_status, event.error_reason) == (
        ev.REQUEST_STATUS_FAILED, 504, "UPSTREAM_TIMEOUT")
    assert (event.prompt_tokens, event.completion_tokens, event.cost_usd) == (0, 0, "0")


def test_failure_before_routing_has_no_provider() -> None:
    rec = record()
    rec.fail(GatewayError(Reason.INVALID_API_KEY, "bad key"))
    event = rec.to_event()
    assert (event.provider, event.upstream_model, event.cost_usd, event.http_status) == ("", "", "0", 401)


@pytest.mark.parametrize(("prices", "tokens", "cost"), [
    (("0.00002", "0"), (1, 0), "0.00000002"),  # no exponent notation for tiny amounts
    (("0.0001500", "0.000600"), (10, 10), "0.0000075"),  # no trailing zeros
    (("15", "60"), (1000, 1000), "75"),
    (("2.5", "10"), (400, 0), "1"),
    (("0", "0"), (123, 456), "0"),
])
def test_cost_string_is_exact_and_plain(prices: tuple[str, str], tokens: tuple[int, int], cost: str) -> None:
    event = record(candidate=candidate(*prices), usage=usage(*tokens)).to_event()
    assert event.cost_usd == cost
    assert Decimal(event.cost_usd) == price(candidate(*prices), *tokens)


class Publisher:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[ev.UsageEvent] = []
        self.fail = fail

    async def publish(self, event: ev.UsageEvent) -> None:
        self.events.append(event)
        if self.fail:
            raise ConnectionError("nats down")


async def test_recorder_publishes_in_the_background() -> None:
    publisher = Publisher()
    recorder = UsageRecorder(publisher)
    event = recorder.finish(record(candidate=candidate(), usage=usage(10, 10)))
    await recorder.drain()
    assert publisher.events == [event]


async def test_recorder_skips_requests_without_an_organization() -> None:
    publisher = Publisher()
    recorder = UsageRecorder(publisher)
    recorder.finish(record(organization_id=""))
    await recorder.drain()
    assert publisher.events == []


async def test_recorder_logs_a_failed_publish(caplog: pytest.LogCaptureFixture) -> None:
    recorder = UsageRecorder(Publisher(fail=True))
    with caplog.at_level(logging.ERROR, logger="edge.accounting"):
        recorder.finish(record(candidate=candidate()))
        await recorder.drain()
    assert any("req-1" in r.getMessage() for r in caplog.records)


async def test_recorder_without_publisher() -> None:
    recorder = UsageRecorder(None)
    assert recorder.finish(record()).request_id == "req-1"
    await recorder.drain()


def _model_labels() -> set[str]:
    """Every `model` label value the request metrics hold in this process."""
    labels = set()
    for metric in (telemetry.REQUESTS, telemetry.TOKENS, telemetry.COST, telemetry.TTFT):
        for family in metric.collect():
            labels.update(sample.labels["model"] for sample in family.samples if "model" in sample.labels)
    return labels


async def test_metric_labels_come_from_the_catalog_only() -> None:
    recorder = UsageRecorder(None)
    before = _model_labels()
    for _ in range(20):  # a model the catalog does not know, never routed: no candidate
        recorder.finish(record(public_model="random-" + secrets.token_hex(8), organization_id="",
                               first_token_at=100.5))
    assert _model_labels() - before <= {"unknown"}
    assert "unknown" in _model_labels()
    grown = _model_labels()
    for _ in range(20):
        recorder.finish(record(public_model="random-" + secrets.token_hex(8), organization_id=""))
    assert _model_labels() == grown
    # A model routing resolved (it handed out a candidate) is a catalog id: it is the label.
    recorder.finish(record(candidate=candidate(), organization_id=""))
    assert "gpt-4o-mini" in _model_labels()


def test_an_unexpected_exception_is_recorded_as_a_failure_never_a_success() -> None:
    recorder = UsageRecorder(None)
    rec = record(candidate=candidate())
    with pytest.raises(KeyError), recorder.recording(rec):
        raise KeyError("a bug")
    event = rec.to_event()
    assert (event.status, event.http_status, event.error_reason) == (
        ev.REQUEST_STATUS_FAILED, 500, "INTERNAL")
