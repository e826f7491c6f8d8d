"""Legacy completions conformance (`AdapterService.Complete`), through the servicer in-process and
over gRPC, against a real fake upstream.

Case `completions`: only OpenAI-style providers have `/v1/completions`, so the upstream requests
are read as OpenAI's (`harness.sent().body`). Every profile that declares the case out must refuse
it with UNSUPPORTED_PARAMETER before sending, so routing moves on.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Literal

import orjson
import pytest
from google.protobuf import json_format
from openai.types import Completion, CompletionChoice

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import completion_pb2
from services.core.errors import GatewayError, Reason
from tests.conformance import checks
from tests.conformance.cases import ERROR_CASES
from tests.conformance.conftest import Harness
from tests.conformance.test_error_cases import check_error, script

pytestmark = pytest.mark.conformance("completions")
UPSTREAM_MODEL = "gpt-3.5-turbo-instruct"


class CompletionChunkChoice(CompletionChoice):
    """A streamed choice: `finish_reason` is null until the last (the SDK shares one type for both)."""

    finish_reason: Literal["stop", "length", "content_filter"] | None = None  # type: ignore[assignment]


class CompletionChunk(Completion):
    choices: list[CompletionChunkChoice]  # type: ignore[assignment]


def complete_call(harness: Harness, request: dict[str, Any], *, timeout_ms: int = 0,
                  request_id: str = "req-conf-complete",
                  **candidate: Any) -> adapter_service_pb2.CompleteRequest:
    typed = json_format.ParseDict({"model": "smart-model"} | request, completion_pb2.CompletionRequest())
    return adapter_service_pb2.CompleteRequest(
        candidate=harness.candidate(**{"upstream_model": UPSTREAM_MODEL} | candidate), request=typed,
        request_id=request_id, timeout_ms=timeout_ms)


def stream(harness: Harness, call: adapter_service_pb2.CompleteRequest,
           ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
    """The servicer's events; a failure surfaces as GatewayError on either transport."""
    return harness.stream(call, "Complete")


async def complete(harness: Harness, request: dict[str, Any], **options: Any,
                   ) -> list[adapter_service_pb2.ChatResponse]:
    return [event async for event in stream(harness, complete_call(harness, request, **options))]


async def complete_error(harness: Harness, request: dict[str, Any], **options: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await complete(harness, request, **options)
    return info.value


def check_labels(harness: Harness, body: dict[str, Any]) -> None:
    assert body["model"] == "smart-model" and body["object"] == "text_completion"
    assert body["provider"]["name"] == f"prov-{harness.profile.id}"
    assert body["provider"]["model"] == harness.profile.wire.reported_model(UPSTREAM_MODEL)
    assert isinstance(body["provider"]["latency_ms"], int)


def whole(harness: Harness, events: list[adapter_service_pb2.ChatResponse]) -> Completion:
    return checks.whole(harness, events, Completion, check_labels)


def chunks(harness: Harness, events: list[adapter_service_pb2.ChatResponse]) -> list[CompletionChunk]:
    return checks.streamed(harness, events, CompletionChunk, check_labels)


async def test_text(harness: Harness) -> None:
    events = await complete(harness, {"prompt": "Say this is a test", "temperature": 0, "max_tokens": 7,
                                      "models": ["fallback"], "provider": {"order": ["x"]}})
    [choice] = whole(harness, events).choices
    assert (choice.text, choice.finish_reason) == (" Say this is a test", "stop")
    assert events[0].has_content
    usage = events[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 6, 11)
    sent = harness.sent()
    assert sent.path == "/v1/completions" and sent.request_id() == "req-conf-complete"
    assert sent.body == {"model": UPSTREAM_MODEL, "prompt": "Say this is a test", "temperature": 0,
                         "max_tokens": 7}


async def test_every_parameter_reaches_the_upstream(harness: Harness) -> None:
    request = {"prompt": ["one", "two STOP three"], "n": 2, "echo": True, "logprobs": 2, "stop": ["STOP"],
               "suffix": "end", "best_of": 2, "seed": 7, "logit_bias": {"50256": -100}, "user": "u-1"}
    completion = whole(harness, await complete(harness, request))
    assert [c.text for c in completion.choices] == ["one one [before end]"] * 2 + ["two STOP three two "] * 2
    assert all(c.logprobs is not None and c.logprobs.tokens for c in completion.choices)
    assert harness.sent().body == {"model": UPSTREAM_MODEL, **request}


async def test_token_id_prompts_stay_integers(harness: Harness) -> None:
    completion = whole(harness, await complete(harness, {"prompt": [[1, 2, 3], [4]]}))
    assert [c.text for c in completion.choices] == [" 1 2 3", " 4"]
    assert harness.sent().body["prompt"] == [[1, 2, 3], [4]]


async def test_streaming(harness: Harness) -> None:
    events = await complete(harness, {"prompt": "stream these words", "stream": True})
    parsed = chunks(harness, events)
    assert "".join(c.choices[0].text for c in parsed) == " stream these words"
    assert parsed[-1].choices[0].finish_reason == "stop" and len({c.id for c in parsed}) == 1
    assert [e.has_content for e in events if e.body] == [True, True, True, True, False]
    billed = [e for e in events if e.HasField("usage")]
    assert len(billed) == 1 and billed[0].body == b"" and billed[0].usage.completion_tokens == 4
    assert all(b'"usage"' not in e.body for e in events)
    assert harness.sent().asks_stream_usage()


async def test_usage_in_stream_when_asked(harness: Harness) -> None:
    events = await complete(harness, {"prompt": "two words", "stream": True,
                                      "stream_options": {"include_usage": True}})
    parsed = chunks(harness, events)
    assert parsed[-1].choices == [] and parsed[-1].usage is not None
    assert parsed[-1].usage.total_tokens == events[-1].usage.total_tokens == 2 + 3
    assert all(c.usage is None for c in parsed[:-1])


async def test_chunks_arrive_while_the_upstream_is_still_generating(harness: Harness) -> None:
    harness.fake.hold_streams()
    events = stream(harness, complete_call(harness, {"prompt": "a b c", "stream": True}))
    first = await anext(events)
    assert orjson.loads(first.body)["choices"][0]["text"] == " "
    harness.fake.release_streams()
    rest = [event async for event in events]
    assert "".join(c.choices[0].text for c in chunks(harness, [first, *rest]) if c.choices) == " a b c"


@pytest.mark.parametrize("stream_", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("name", list(ERROR_CASES))
async def test_error_class(harness: Harness, name: str, stream_: bool) -> None:
    script(harness, ERROR_CASES[name])
    check_error(harness, await complete_error(harness, {"prompt": "hi", "stream": stream_}), name)
    assert len(await complete(harness, {"prompt": "ok"})) == 1


@pytest.mark.parametrize("type_, reason", [("server_error", Reason.UPSTREAM_ERROR),
                                           ("rate_limit_error", Reason.UPSTREAM_RATE_LIMITED)])
async def test_error_event_inside_a_stream(harness: Harness, type_: str, reason: Reason) -> None:
    harness.fake.fail_next(harness.profile.failures.in_stream(2, type_))
    received = []
    with pytest.raises(GatewayError) as info:
        async for event in stream(harness, complete_call(harness, {"prompt": "a b c", "stream": True})):
            received.append(event)
    assert len(received) == 2 and received[1].has_content and info.value.reason is reason


async def test_upstream_timeout(harness: Harness) -> None:
    harness.fake.first_byte_delay_s = 2.0
    error = await complete_error(harness, {"prompt": "slow"}, timeout_ms=200)
    assert error.reason is Reason.UPSTREAM_TIMEOUT


async def test_closing_the_stream_closes_the_upstream(harness: Harness) -> None:
    harness.fake.hold_streams()
    async with aclosing(stream(harness, complete_call(harness, {"prompt": "a b c d", "stream": True}))) as s:
        await anext(s)
    await harness.fake.wait_for_disconnect(within_s=5.0)
    assert harness.fake.disconnects == 1


async def test_key_is_sent_only_where_configured(harness: Harness) -> None:
    await complete(harness, {"prompt": "hi"})
    assert harness.sent().api_key() == harness.profile.api_key


@pytest.mark.conformance("completions", declared_out=True)
async def test_a_kind_without_completions_refuses_them(harness: Harness) -> None:
    error = await complete_error(harness, {"prompt": "hi"})
    assert error.reason is Reason.UNSUPPORTED_PARAMETER and error.http_status == 400
    assert error.message == f"Provider kind '{harness.profile.kind}' does not support completions."
    assert not harness.fake.requests
