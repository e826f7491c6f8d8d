"""The cost formula for every provider kind (edge/accounting.py `price`, docs/pricing.md §1): each
provider's usage, in its recorded wire shape, goes through its adapter's decoding into our
`Usage`, and the cost equals the hand-computed Decimal: uncached prompt tokens at the input price,
cache reads and writes at theirs, completion tokens other than reasoning at the output price,
reasoning at its own. The budget hold stays an upper bound at the dearest class."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from aggregator.openai.v1 import chat_pb2
from aggregator.routing.v1 import route_pb2
from edge.accounting import RequestRecord, price
from services.adapters import cohere_answers, google_answers
from services.adapters.anthropic_wire import AnthropicUsage
from services.adapters.openai_wire import usage_to_proto
from services.limits.budgets import micro, worst_case_micro

IN, CACHED, WRITE, OUT, REASONING = (Decimal(t) for t in ("0.003", "0.0003", "0.00375", "0.015", "0.06"))


def candidate(kind: str = "openai", **prices: str) -> route_pb2.RouteCandidate:
    fields = {"input_per_1k": str(IN), "output_per_1k": str(OUT), "cached_input_per_1k": str(CACHED),
              "cache_write_per_1k": str(WRITE), "reasoning_per_1k": str(REASONING), **prices}
    return route_pb2.RouteCandidate(public_model="m", upstream_model="m", max_output_tokens=1000,
                                    endpoint=route_pb2.Endpoint(provider=kind, kind=kind), **fields)


def expected(uncached: int, cached: int, written: int, output: int, reasoning: int) -> Decimal:
    return (uncached * IN + cached * CACHED + written * WRITE + output * OUT + reasoning * REASONING) / 1000


def cost(usage: chat_pb2.Usage, kind: str = "openai") -> Decimal:
    return price(candidate(kind), usage.prompt_tokens, usage.completion_tokens, 0, usage)


def test_openai_cached_tokens_are_part_of_the_prompt() -> None:
    # Chat Completions' usage of a reasoning model with a prompt-cache hit.
    usage = usage_to_proto({
        "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    assert cost(usage) == expected(2006 - 1920, 1920, 0, 300 - 192, 192) == Decimal("0.013974")


def test_anthropic_cache_reads_and_writes_are_outside_input_tokens() -> None:
    # Messages API: `input_tokens` excludes the cache reads and the cache writes; the adapter adds
    # them into prompt_tokens once, so each is priced once, at its own price.
    raw = {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 1200,
           "output_tokens": 393, "output_tokens_details": {"thinking_tokens": 100},
           "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
           "service_tier": "standard"}
    usage = usage_to_proto(AnthropicUsage.decode(raw).to_openai())
    assert usage.prompt_tokens == 21 + 188086 + 1200
    assert cost(usage, "anthropic") == expected(21, 1200, 188086, 393 - 100, 100) == Decimal("0.7161405")


def test_google_thoughts_are_reasoning_and_cached_content_is_part_of_the_prompt() -> None:
    meta = {"promptTokenCount": 5000, "cachedContentTokenCount": 4096, "candidatesTokenCount": 250,
            "thoughtsTokenCount": 700, "totalTokenCount": 5950}
    usage = usage_to_proto(google_answers.usage_of(meta))
    assert (usage.prompt_tokens, usage.completion_tokens) == (5000, 950)
    assert cost(usage, "google") == expected(5000 - 4096, 4096, 0, 250, 700) == Decimal("0.0496908")


def test_cohere_cached_tokens_are_part_of_the_billed_input() -> None:
    obj: dict[str, Any] = {"billed_units": {"input_tokens": 1500, "output_tokens": 80},
                           "tokens": {"input_tokens": 1520, "output_tokens": 80}, "cached_tokens": 1024}
    usage = usage_to_proto(cohere_answers.usage(obj) or {})
    assert cost(usage, "cohere") == expected(1500 - 1024, 1024, 0, 80, 0) == Decimal("0.0029352")


def test_without_class_prices_every_token_is_at_the_input_or_output_price() -> None:
    plain = route_pb2.RouteCandidate(input_per_1k="0.003", output_per_1k="0.015")
    usage = usage_to_proto({"prompt_tokens": 1000, "completion_tokens": 100,
                            "prompt_tokens_details": {"cached_tokens": 600, "cache_creation_tokens": 300},
                            "completion_tokens_details": {"reasoning_tokens": 50}})
    assert price(plain, 1000, 100, 0, usage) == Decimal("0.0045")


def test_inconsistent_parts_are_capped_never_negative() -> None:
    usage = usage_to_proto({"prompt_tokens": 10, "completion_tokens": 5,
                            "prompt_tokens_details": {"cached_tokens": 8, "cache_creation_tokens": 8},
                            "completion_tokens_details": {"reasoning_tokens": 9}})
    assert cost(usage) == expected(0, 8, 2, 0, 5)


def test_images_are_added_at_the_per_image_price() -> None:
    assert price(candidate(per_image="0.04"), 10, 0, 3) == 10 * IN / 1000 + 3 * Decimal("0.04")


def test_the_usage_event_carries_the_cost_of_every_class() -> None:
    record = RequestRecord(request_id="r", endpoint="chat.completions", public_model="m", stream=False,
                           candidate=candidate("anthropic"))
    record.usage = usage_to_proto(AnthropicUsage.decode(
        {"input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200,
         "output_tokens": 50}).to_openai())
    event = record.to_event()
    assert Decimal(event.cost_usd) == expected(10, 1000, 200, 50, 0) == Decimal("0.00183")


@pytest.mark.parametrize(("dear", "prices"), [
    ("reasoning", {"reasoning_per_1k": "0.5"}),
    ("cache write", {"cache_write_per_1k": "0.5"}),
    ("cache read", {"cached_input_per_1k": "0.5"}),
])
def test_the_budget_hold_prices_each_token_at_its_dearest_class(dear: str, prices: dict[str, str]) -> None:
    route = candidate(**prices)
    # 400 characters: 100 prompt tokens; max_tokens 1000, all of which may be reasoning.
    hold = worst_case_micro(400, 1000, [route])
    worst = price(route, 100, 1000, 0, usage_to_proto({
        "prompt_tokens": 100, "completion_tokens": 1000,
        "prompt_tokens_details": {"cached_tokens": 100 if dear == "cache read" else 0,
                                  "cache_creation_tokens": 100 if dear == "cache write" else 0},
        "completion_tokens_details": {"reasoning_tokens": 1000 if dear == "reasoning" else 0}}))
    classes_in = (("input_per_1k", IN), ("cached_input_per_1k", CACHED), ("cache_write_per_1k", WRITE))
    dearest_in = max(Decimal(prices.get(k, v)) for k, v in classes_in)
    classes_out = (("output_per_1k", OUT), ("reasoning_per_1k", REASONING))
    dearest_out = max(Decimal(prices.get(k, v)) for k, v in classes_out)
    assert hold >= micro(worst) and hold == micro((100 * dearest_in + 1000 * dearest_out) / 1000)
