"""Error conformance: each upstream failure class becomes the gateway's error for it, on both
transports, streamed or not, and the client never sees upstream text that may hold secrets.

The error classes are `cases.ERROR_CASES` (each its own case of the table); a profile's
`error_outcomes` declares where its provider's error model gives other attributes, and for a class
it declares out, what the nearest failure it does send yields instead (also proven here).
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from services.core.errors import GatewayError, Reason
from tests.conformance.cases import ERROR_CASES, STREAM_ERROR_CASES, ErrorCase
from tests.conformance.checks import user
from tests.conformance.conftest import Harness
from tests.conformance.providers import ProviderProfile


def script(harness: Harness, case: ErrorCase) -> None:
    """The next upstream call fails with the profile's preset for `case`."""
    harness.fake.fail_next(getattr(harness.profile.failures, case.preset)(*case.args))


def expected(profile: ProviderProfile, name: str) -> dict[str, Any]:
    """What error class `name` must give for this profile (its declared outcome applied)."""
    case = ERROR_CASES.get(name) or STREAM_ERROR_CASES[name]
    outcome = profile.error_outcomes.get(name)
    return case.expected(outcome.expect if outcome else None)


def check_error(harness: Harness, error: GatewayError, name: str) -> None:
    """The error is the class's, and no secret of the upstream's text reached the client."""
    for attribute, value in expected(harness.profile, name).items():
        assert getattr(error, attribute) == value, attribute
    for secret in ("sk-", "org-secret", "AIza", harness.profile.api_key or "sk-"):
        assert secret not in error.message
    assert error.to_openai()["error"]["type"]


def has_outcome(profile: ProviderProfile, name: str) -> bool:
    return name in profile.error_outcomes


@pytest.mark.conformance(each=ERROR_CASES)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_error_class(harness: Harness, variant: str, stream: bool) -> None:
    script(harness, ERROR_CASES[variant])
    error = await harness.chat_error({"messages": [user("hi")], "stream": stream})
    check_error(harness, error, variant)
    assert len(await harness.chat({"messages": [user("ok")]})) == 1  # the next request is unaffected


@pytest.mark.conformance(each=ERROR_CASES, declared_out=True, where=has_outcome)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_error_class_a_provider_does_not_have(harness: Harness, variant: str, stream: bool) -> None:
    """The nearest failure the provider sends gives the outcome its profile declares."""
    script(harness, ERROR_CASES[variant])
    check_error(harness, await harness.chat_error({"messages": [user("hi")], "stream": stream}), variant)


async def failed_stream(harness: Harness, name: str) -> tuple[list[Any], GatewayError]:
    script(harness, STREAM_ERROR_CASES[name])
    received = []
    call = harness.chat_request({"messages": [user("a b c")], "stream": True})
    with pytest.raises(GatewayError) as info:
        async for event in harness.stream(call):
            received.append(event)
    return received, info.value


@pytest.mark.conformance(each=STREAM_ERROR_CASES)
async def test_error_event_inside_a_stream(harness: Harness, variant: str) -> None:
    received, error = await failed_stream(harness, variant)
    assert [e.has_content for e in received if e.body][:2] == [False, True]  # content went out first
    check_error(harness, error, variant)


@pytest.mark.conformance(each=STREAM_ERROR_CASES, declared_out=True, where=has_outcome)
async def test_error_event_a_provider_does_not_have(harness: Harness, variant: str) -> None:
    received, error = await failed_stream(harness, variant)
    assert any(e.has_content for e in received)
    check_error(harness, error, variant)


@pytest.mark.conformance("timeout")
async def test_upstream_timeout(harness: Harness) -> None:
    harness.fake.first_byte_delay_s = 2.0
    error = await harness.chat_error({"messages": [user("slow")]}, timeout_ms=200)
    assert error.reason is Reason.UPSTREAM_TIMEOUT


@pytest.mark.conformance("timeout")
async def test_stream_idle_timeout(harness: Harness) -> None:
    harness.fake.hold_streams()  # the first upstream event comes, then silence
    received = []
    with pytest.raises(GatewayError) as info:
        async for event in harness.stream(harness.chat_request({"messages": [user("a b")], "stream": True},
                                                               timeout_ms=300)):
            received.append(event)
    # What the first upstream event gave went out (one chunk, or a role chunk and its first text).
    assert 1 <= len(received) <= 2 and info.value.reason is Reason.UPSTREAM_TIMEOUT


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
    assert harness.sent().api_key() == harness.profile.api_key  # None: a keyless server gets none


@pytest.mark.conformance("credentials")
async def test_wrong_key_is_an_auth_failure_without_the_key(harness: Harness) -> None:
    if harness.profile.api_key is None:
        harness.fake.api_key = "sk-server-demands-a-key"  # a keyless profile meets a server that wants one
    else:
        harness.fake.api_key = harness.profile.api_key + "-rotated"
    error = await harness.chat_error({"messages": [user("hi")]})
    assert error.reason is Reason.UPSTREAM_AUTH_FAILED
    assert "sk-" not in error.message and "*" not in error.message
    assert harness.profile.api_key is None or harness.profile.api_key not in error.message
