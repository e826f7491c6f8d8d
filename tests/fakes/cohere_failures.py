"""Scripted failures in Cohere's real error format, for `FakeCohere.fail_next()`.

The function names are `openai_failures`'s where Cohere has the error class; Cohere's bodies are
`{"message": str}` (sometimes with an `id`) whatever the status, with no type, parameter or
code. Cohere has no 529 "overloaded" and no typed in-stream error: a failed generation ends its
stream with `message-end` and finish_reason ERROR (`in_stream`). Cohere's own statuses 402, 498
and 499 have presets of their own.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fakes import cohere_payloads as payloads
from tests.fakes.base import Failure

ERROR_ID = "5b1c7f0e-aaaa-4bbb-8ccc-0123456789ab"


def _failure(status: int, message: str, headers: dict[str, str] | None = None) -> Failure:
    return Failure(status=status, body=orjson.dumps(payloads.error(message, ERROR_ID)), headers=headers or {})


def unauthorized() -> Failure:
    return _failure(401, "invalid api token")


def forbidden() -> Failure:
    return _failure(403, "You do not have access to this model with the key sk-org-secret-abc.")


def payment_required() -> Failure:
    """402: the account cannot be billed (a trial key over its monthly limit, a card declined)."""
    return _failure(402, "Please add or update your payment method for org-secret on the dashboard.")


def invalid_token() -> Failure:
    """498: Cohere's status for an expired or revoked token."""
    return _failure(498, "invalid api token")


def client_closed() -> Failure:
    """499: Cohere saw the request cancelled."""
    return _failure(499, "request cancelled")


def rate_limited(retry_after_s: int = 2, retry_after_ms: int | None = None) -> Failure:
    """429 naming the trial limit, with `Retry-After` (and `retry-after-ms` only when asked)."""
    headers = {"Retry-After": str(retry_after_s)}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    return _failure(429, "You are using a Trial key, which is limited to 10 API calls / minute for "
                         "org-secret. Upgrade to a Production key.", headers)


def bad_request(message: str = "invalid request: temperature must be between 0 and 5") -> Failure:
    return _failure(400, message)


def context_length_exceeded() -> Failure:
    """Cohere answers an over-long prompt with an ordinary 400 message (no code to tell it apart)."""
    return _failure(400, "too many tokens: total number of tokens in the prompt cannot exceed 128000 - "
                         "received 130000. Try using a shorter prompt")


def unprocessable(message: str = "Input should be a valid list") -> Failure:
    return _failure(422, message)


def model_not_found(model: str = "command-unknown") -> Failure:
    return _failure(404, f"model '{model}' not found, make sure the correct model ID was used and that you "
                         "have access to the model.")


def server_error(status: int = 500) -> Failure:
    return _failure(status, "internal server error, this has been reported to our developers")


def unavailable() -> Failure:
    return _failure(503, "service unavailable", {"Retry-After": "1"})


def timeout(status: int = 504) -> Failure:
    """408 or 504, with a proxy's HTML body (nothing typed to decode)."""
    return Failure(status=status, body=b"<html><body>Gateway Timeout</body></html>", content_type="text/html")


def in_stream(after_chunks: int = 2, finish_reason: str = "ERROR", **end: Any) -> Failure:
    """A stream that sends `after_chunks` events, then a `message-end` whose generation failed
    (finish_reason ERROR or TIMEOUT); a non-streamed call answers that finish_reason whole."""
    body = payloads.failed_end(finish_reason=finish_reason, **end)
    return Failure(status=200, body=orjson.dumps(body), after_chunks=after_chunks)


def cut_stream(after_chunks: int = 2) -> Failure:
    """A stream that sends `after_chunks` events and ends without `message-end`."""
    return Failure(status=200, body=b"", after_chunks=after_chunks)
