"""Error conformance: each upstream failure class becomes the gateway's error for it, on both
transports, streamed or not, and the client never sees upstream text that may hold secrets."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.core.errors import Reason
from tests.conformance.checks import user
from tests.conformance.conftest import Harness


@dataclass(frozen=True)
class ErrorCase:
    """A scripted upstream failure (by the profile's failure-preset name) and what must come out."""

    preset: str
    args: tuple[Any, ...]
    reason: Reason
    http_status: int
    expect: dict[str, Any] = field(default_factory=dict)  # attributes of the GatewayError


ERROR_CASES = {
    "auth": ErrorCase("unauthorized", (), Reason.UPSTREAM_AUTH_FAILED, 502),
    "forbidden": ErrorCase("forbidden", (), Reason.UPSTREAM_AUTH_FAILED, 502),
    "rate_limit": ErrorCase("rate_limited", (2,), Reason.UPSTREAM_RATE_LIMITED, 429, {"retry_after": 2.0}),
    "rate_limit_ms": ErrorCase("rate_limited", (2, 1500), Reason.UPSTREAM_RATE_LIMITED, 429,
                               {"retry_after": 1.5}),
    "bad_request": ErrorCase("bad_request", (), Reason.UPSTREAM_BAD_REQUEST, 400,
                             {"param": "temperature", "code": "invalid_value",
                              "message": "Invalid value for 'temperature': must be between 0 and 2."}),
    "unprocessable": ErrorCase("unprocessable", (), Reason.UPSTREAM_BAD_REQUEST, 400,
                               {"message": "Input should be a valid list"}),
    "context_length": ErrorCase("context_length_exceeded", (), Reason.CONTEXT_LENGTH_EXCEEDED, 400,
                                {"param": "messages", "code": "context_length_exceeded"}),
    "not_found": ErrorCase("model_not_found", (), Reason.UPSTREAM_BAD_REQUEST, 400,
                           {"code": "model_not_found"}),
    "server_error": ErrorCase("server_error", (500,), Reason.UPSTREAM_ERROR, 502),
    "bad_gateway": ErrorCase("server_error", (502,), Reason.UPSTREAM_ERROR, 502),
    "unavailable": ErrorCase("unavailable", (), Reason.UPSTREAM_UNAVAILABLE, 503, {"retry_after": 1.0}),
    "overloaded": ErrorCase("overloaded", (), Reason.UPSTREAM_OVERLOADED, 503),
    "gateway_timeout": ErrorCase("timeout", (504,), Reason.UPSTREAM_TIMEOUT, 504),
    "request_timeout": ErrorCase("timeout", (408,), Reason.UPSTREAM_TIMEOUT, 504),
}


def script(harness: Harness, preset: str, *args: Any) -> None:
    failure: Callable[..., Any] = getattr(harness.profile.failures, preset)
    harness.fake.fail_next(failure(*args))


@pytest.mark.conformance("errors")
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("name", list(ERROR_CASES))
async def test_error_class(harness: Harness, name: str, stream: bool) -> None:
    case = ERROR_CASES[name]
    script(harness, case.preset, *case.args)
    error = await harness.chat_error({"messages": [user("hi")], "stream": stream})
    assert error.reason is case.reason and error.http_status == case.http_status
    for attribute, value in case.expect.items():
        assert getattr(error, attribute) == value, attribute
    # Upstream text that can carry our key or account never reaches the client.
    assert "sk-" not in error.message and "org-secret" not in error.message
    assert error.to_openai()["error"]["type"]
    # The next request is unaffected.
    assert len(await harness.chat({"messages": [user("ok")]})) == 1


@pytest.mark.conformance("error_in_stream")
@pytest.mark.parametrize("type_, reason", [("server_error", Reason.UPSTREAM_ERROR),
                                           ("rate_limit_error", Reason.UPSTREAM_RATE_LIMITED),
                                           ("overloaded_error", Reason.UPSTREAM_OVERLOADED)])
async def test_error_event_inside_a_stream(harness: Harness, type_: str, reason: Reason) -> None:
    harness.fake.fail_next(harness.profile.failures.in_stream(2, type_))
    received = []
    with pytest.raises(Exception) as info:
        call = harness.chat_request({"messages": [user("a b c")], "stream": True})
        async for event in harness.stream(call):
            received.append(event)
    assert len(received) == 2 and received[1].has_content
    assert getattr(info.value, "reason", None) is reason


@pytest.mark.conformance("timeout")
async def test_upstream_timeout(harness: Harness) -> None:
    harness.fake.first_byte_delay_s = 2.0
    error = await harness.chat_error({"messages": [user("slow")]}, timeout_ms=200)
    assert error.reason is Reason.UPSTREAM_TIMEOUT


@pytest.mark.conformance("timeout")
async def test_stream_idle_timeout(harness: Harness) -> None:
    harness.fake.hold_streams()  # the first chunk comes, then silence
    received = []
    with pytest.raises(Exception) as info:
        async for event in harness.stream(harness.chat_request({"messages": [user("a b")], "stream": True},
                                                               timeout_ms=300)):
            received.append(event)
    assert len(received) == 1 and getattr(info.value, "reason", None) is Reason.UPSTREAM_TIMEOUT


@pytest.mark.conformance("connect_error")
async def test_unreachable_upstream(harness: Harness) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await harness.chat_error({"messages": [user("hi")]}, base_url=f"http://127.0.0.1:{port}/v1")
    assert error.reason is Reason.UPSTREAM_UNAVAILABLE and error.retriable


@pytest.mark.conformance("credentials")
async def test_missing_credential_names_the_variable(harness: Harness) -> None:
    error = await harness.chat_error({"messages": [user("hi")]}, api_key_env="CONFORMANCE_UNSET_KEY")
    assert error.reason is Reason.UPSTREAM_AUTH_FAILED
    assert "CONFORMANCE_UNSET_KEY" in error.message
    assert not harness.fake.requests  # nothing was sent


@pytest.mark.conformance("credentials")
async def test_key_is_sent_only_where_configured(harness: Harness) -> None:
    await harness.chat({"messages": [user("hi")]})
    headers = harness.fake.requests[-1].headers
    if harness.profile.api_key is None:
        assert "authorization" not in headers
    else:
        assert headers["authorization"] == f"Bearer {harness.profile.api_key}"


@pytest.mark.conformance("credentials")
async def test_wrong_key_is_an_auth_failure_without_the_key(harness: Harness) -> None:
    if harness.profile.api_key is None:
        harness.fake.api_key = "sk-server-demands-a-key"  # a keyless profile meets a server that wants one
    else:
        harness.fake.api_key = harness.profile.api_key + "-rotated"
    error = await harness.chat_error({"messages": [user("hi")]})
    assert error.reason is Reason.UPSTREAM_AUTH_FAILED
    assert "sk-" not in error.message and "*" not in error.message
