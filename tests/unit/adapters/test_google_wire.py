"""Gemini error bodies decode into typed values (ErrorInfo reasons, RetryInfo delays), never by text."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.adapters.google_wire import CREDENTIAL_REASONS, GoogleError, as_response
from services.adapters.json_values import parse_object
from services.adapters.upstream_errors import to_gateway_error
from services.core.errors import GatewayError, Reason


def body(code: int, status: str, message: str, *details: Any) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def info(reason: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"}}


def retry(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def gateway_error(raw: bytes, status: int, retry_after: float | None = None) -> GatewayError:
    return to_gateway_error(GoogleError.decode(raw).failure(status, retry_after), provider="gemini",
                            upstream_model="gemini-2.0-flash")


def test_invalid_key_is_an_auth_failure_by_its_error_info() -> None:
    raw = body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
               info("API_KEY_INVALID"),
               {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                "message": "x"})
    decoded = GoogleError.decode(raw)
    assert decoded.reasons == ("API_KEY_INVALID",) and decoded.credentials_rejected
    error = gateway_error(raw, 400)
    assert error.reason is Reason.UPSTREAM_AUTH_FAILED and error.http_status == 502
    assert "API key" not in error.message and "gemini" in error.message


def test_same_status_without_the_reason_is_a_bad_request() -> None:
    raw = body(400, "INVALID_ARGUMENT", "* contents: must not be empty")
    error = gateway_error(raw, 400)
    assert error.reason is Reason.UPSTREAM_BAD_REQUEST and error.message == "* contents: must not be empty"
    assert error.param is None and error.code is None


def test_suspended_consumer_does_not_leak_the_key() -> None:
    raw = body(403, "PERMISSION_DENIED", "Consumer 'api_key:AIzaSecret' has been suspended.",
               info("CONSUMER_SUSPENDED"))
    error = gateway_error(raw, 403)
    assert error.reason is Reason.UPSTREAM_AUTH_FAILED and "AIza" not in error.message


@pytest.mark.parametrize("delay, seconds", [("43s", 43.0), ("1.500s", 1.5), ("0.25s", 0.25)])
def test_rate_limit_delay_comes_from_retry_info(delay: str, seconds: float) -> None:
    raw = body(429, "RESOURCE_EXHAUSTED", "quota of project 1234", {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "x"}]},
        retry(delay))
    error = gateway_error(raw, 429)
    assert error.reason is Reason.UPSTREAM_RATE_LIMITED and error.retry_after == seconds
    assert "1234" not in error.message


def test_retry_after_header_wins_over_retry_info() -> None:
    assert gateway_error(body(429, "RESOURCE_EXHAUSTED", "q", retry("40s")), 429, 5.0).retry_after == 5.0


def test_unknown_and_malformed_details_are_skipped() -> None:
    raw = body(400, "INVALID_ARGUMENT", "m", {"@type": "type.googleapis.com/google.foo.Bar", "x": 1},
               retry("soon"), "not-an-object", info("API_KEY_INVALID"))
    decoded = GoogleError.decode(raw)
    assert decoded.reasons == ("API_KEY_INVALID",) and decoded.retry_delay is None


@pytest.mark.parametrize("raw", [b"<html>Error 502</html>", b"[]", b'{"error": "text"}', b""])
def test_undecodable_bodies_are_empty(raw: bytes) -> None:
    assert GoogleError.decode(raw) == GoogleError()
    assert gateway_error(raw, 502).reason is Reason.UPSTREAM_ERROR


@pytest.mark.parametrize("error, status", [
    ({"code": 429, "status": "RESOURCE_EXHAUSTED"}, 429),
    ({"status": "UNAVAILABLE"}, 503),
    ({"status": "DEADLINE_EXCEEDED"}, 504),
    ({"status": "INTERNAL"}, 500),
    ({"status": "NO_SUCH_STATUS"}, 500),
    ({"code": 3, "status": "INVALID_ARGUMENT"}, 400),  # a canonical code, not an HTTP status
    ({}, 500),
])
def test_in_stream_status_hint(error: dict[str, Any], status: int) -> None:
    assert GoogleError.from_object({"error": error}).status_hint() == status


def test_not_found_names_the_model() -> None:
    error = gateway_error(body(404, "NOT_FOUND", "models/x is not found for API version v1beta"), 404)
    assert error.reason is Reason.UPSTREAM_BAD_REQUEST and error.code == "model_not_found"


def test_credential_reasons_are_googleapis_error_reasons() -> None:
    assert {"API_KEY_INVALID", "SERVICE_DISABLED", "CONSUMER_SUSPENDED"} <= CREDENTIAL_REASONS
    assert "RATE_LIMIT_EXCEEDED" not in CREDENTIAL_REASONS


def test_parse_object_refuses_non_objects() -> None:
    assert as_response(parse_object(b'{"candidates": []}')) == {"candidates": []}
    for raw in (b"[1]", b"{oops"):
        with pytest.raises(GatewayError) as info_:
            parse_object(raw)
        assert info_.value.reason is Reason.UPSTREAM_ERROR
