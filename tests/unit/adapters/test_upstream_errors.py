"""The upstream status table, and Retry-After parsing."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest
from multidict import CIMultiDict

from services.adapters.upstream_errors import UpstreamFailure, retry_after_seconds, to_gateway_error
from services.core.errors import GatewayError, Reason


def error_for(status: int, **fields: Any) -> GatewayError:
    return to_gateway_error(UpstreamFailure(status, **fields), provider="acme", upstream_model="gpt-x")


@pytest.mark.parametrize("status, reason", [
    (400, Reason.UPSTREAM_BAD_REQUEST), (422, Reason.UPSTREAM_BAD_REQUEST),
    (404, Reason.UPSTREAM_BAD_REQUEST),
    (409, Reason.UPSTREAM_ERROR), (413, Reason.UPSTREAM_BAD_REQUEST),  # a conflict may pass on retry
    (401, Reason.UPSTREAM_AUTH_FAILED), (403, Reason.UPSTREAM_AUTH_FAILED),
    (408, Reason.UPSTREAM_TIMEOUT), (504, Reason.UPSTREAM_TIMEOUT),
    (429, Reason.UPSTREAM_RATE_LIMITED),
    (500, Reason.UPSTREAM_ERROR), (502, Reason.UPSTREAM_ERROR), (501, Reason.UPSTREAM_ERROR),
    (503, Reason.UPSTREAM_UNAVAILABLE), (529, Reason.UPSTREAM_OVERLOADED), (302, Reason.UPSTREAM_ERROR),
])
def test_status_table(status: int, reason: Reason) -> None:
    assert error_for(status).reason is reason


def test_bad_request_keeps_upstream_message_param_and_code() -> None:
    error = error_for(400, message="temperature too high", param="temperature", code="invalid_value")
    assert (error.message, error.param, error.code) == (
        "temperature too high", "temperature", "invalid_value")
    assert error.http_status == 400


def test_context_length_code_has_its_own_reason() -> None:
    error = error_for(400, message="too long", param="messages", code="context_length_exceeded")
    assert error.reason is Reason.CONTEXT_LENGTH_EXCEEDED
    assert error.to_openai()["error"]["code"] == "context_length_exceeded"


def test_a_message_mentioning_context_length_is_not_decoded_by_text() -> None:
    error = error_for(400, message="context_length_exceeded maybe", code=None)
    assert error.reason is Reason.UPSTREAM_BAD_REQUEST


def test_auth_failure_never_shows_the_upstream_message() -> None:
    error = error_for(401, message="Incorrect API key provided: sk-abc***wxyz", code="invalid_api_key")
    assert "sk-" not in error.message and "acme" in error.message
    assert error.code is None


def test_not_found_names_the_upstream_model() -> None:
    error = error_for(404, message="The model `gpt-x` does not exist")
    assert "gpt-x" in error.message and error.code == "model_not_found"


def test_rate_limit_carries_retry_after_and_hides_account_details() -> None:
    error = error_for(429, message="Rate limit reached in organization org-secret", retry_after=2.5)
    assert error.retry_after == 2.5 and "org-secret" not in error.message
    assert ("retry-after", "3") in error.trailing_metadata()


def test_bad_request_without_message_gets_a_generic_one() -> None:
    assert "HTTP 422" in error_for(422).message


@pytest.mark.parametrize("headers, seconds", [
    ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
    ({"Retry-After": "3"}, 3.0),
    ({"Retry-After": "0.5"}, 0.5),
    ({"Retry-After": "-4"}, 0.0),
    ({"Retry-After": "soon"}, None),
    ({"retry-after-ms": "x", "Retry-After": "2"}, 2.0),
    ({}, None),
])
def test_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(CIMultiDict(headers)) == seconds


def test_retry_after_as_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(CIMultiDict({"Retry-After": date}), now=now) == 30.0
