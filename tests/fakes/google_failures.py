"""Scripted failures in the Gemini API's real error format, for `FakeGoogle.fail_next()`.

The same function names as `openai_failures`, each giving what Google sends for that class of
error (`google.rpc.Status` JSON with typed details). Where Google has no such class, the closest
thing it does send is used and the docstring says so: Google never answers 422 or 529, and its
overload is a 503 UNAVAILABLE.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fakes import google_payloads as payloads
from tests.fakes.base import Failure

QUOTA_MESSAGE = ("You exceeded your current quota, please check your plan and billing details. For more "
                 "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.")
# In-stream error classes by OpenAI's type names (what the conformance cases name) or Google's own.
STREAM_ERRORS = {"server_error": (500, "INTERNAL"), "rate_limit_error": (429, "RESOURCE_EXHAUSTED"),
                 "overloaded_error": (503, "UNAVAILABLE")}


def _failure(status: int, body: Any, headers: dict[str, str] | None = None) -> Failure:
    return Failure(status=status, body=orjson.dumps(body), headers=headers or {})


def _html(status: int, title: str) -> Failure:
    """What Google's front end (or a proxy) sends without a JSON body."""
    page = f"<!DOCTYPE html><html lang=en><title>Error {status} ({title})!!1</title></html>"
    return Failure(status=status, body=page.encode(), content_type="text/html")


def unauthorized() -> Failure:
    """A wrong key: 400 INVALID_ARGUMENT whose ErrorInfo reason is API_KEY_INVALID."""
    return _failure(400, payloads.api_key_invalid())


def forbidden() -> Failure:
    """403 PERMISSION_DENIED for a suspended consumer; the message names the key's project."""
    return _failure(403, payloads.error(
        403, "PERMISSION_DENIED",
        "Permission denied: Consumer 'api_key:AIzaSyD-secret-key' has been suspended.",
        payloads.error_info("CONSUMER_SUSPENDED", consumer="projects/123456789")))


def rate_limited(retry_after_s: int = 2, retry_after_ms: int | None = None) -> Failure:
    """429 RESOURCE_EXHAUSTED; Google gives the wait in RetryInfo.retryDelay, not in a header."""
    delay = retry_after_ms / 1000 if retry_after_ms is not None else retry_after_s
    return _failure(429, payloads.error(
        429, "RESOURCE_EXHAUSTED", QUOTA_MESSAGE,
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"}, "quotaValue": "15"}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay:g}s"}))


def bad_request(message: str = "* GenerateContentRequest.generation_config.temperature: must be in the "
                               "range [0.0, 2.0]\n",
                field: str | None = "generation_config.temperature") -> Failure:
    """400 INVALID_ARGUMENT, with a BadRequest field violation when `field` is given."""
    details = [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}]}] if field else []
    return _failure(400, payloads.error(400, "INVALID_ARGUMENT", message, *details))


def context_length_exceeded() -> Failure:
    """Gemini's too-long prompt: a plain 400 INVALID_ARGUMENT (no typed reason says so)."""
    return _failure(400, payloads.error(400, "INVALID_ARGUMENT", "The input token count (1234567) exceeds "
                                        "the maximum number of tokens allowed (1048576)."))


def unprocessable() -> Failure:
    """Google has no 422: an unknown field is its 400 INVALID_ARGUMENT with a BadRequest detail."""
    message = 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'
    return _failure(400, payloads.error(400, "INVALID_ARGUMENT", message, {
        "@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"description": message}]}))


def model_not_found(model: str = "gemini-unknown") -> Failure:
    return _failure(404, payloads.model_not_found(f"models/{model}", "generateContent"))


def server_error(status: int = 500) -> Failure:
    """500 INTERNAL as the API sends it; any other 5xx as Google's front end sends it (HTML)."""
    if status != 500:
        return _html(status, "Server Error")
    return _failure(500, payloads.error(500, "INTERNAL", "An internal error has occurred. Please retry or "
                                        "report in https://developers.generativeai.google/guide/troubleshooting"))


def unavailable() -> Failure:
    """503 UNAVAILABLE, Gemini's answer when a model is overloaded (no Retry-After)."""
    message = "The model is overloaded. Please try again later."
    return _failure(503, payloads.error(503, "UNAVAILABLE", message))


def overloaded() -> Failure:
    """Google has no 529: its overload is the same 503 UNAVAILABLE."""
    return unavailable()


def timeout(status: int = 504) -> Failure:
    """504 DEADLINE_EXCEEDED from the API; 408 (or any other) from a proxy, as HTML."""
    if status != 504:
        return _html(status, "Request Timeout")
    return _failure(504, payloads.error(504, "DEADLINE_EXCEEDED",
                                        "Deadline expired before operation could complete."))


def in_stream(after_chunks: int = 1, type_: str = "server_error") -> Failure:
    """A stream that sends `after_chunks` events, then a `data: {"error": ...}` event. `type_` is
    an OpenAI error type (server_error, rate_limit_error, overloaded_error) or a Google status."""
    code, status = STREAM_ERRORS.get(type_, (500, type_))
    body = payloads.error(code, status, "An internal error has occurred.")
    return Failure(status=200, body=orjson.dumps(body), after_chunks=after_chunks)
