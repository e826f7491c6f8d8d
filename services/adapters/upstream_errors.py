"""The one table from an upstream's HTTP status to the gateway's error reasons.

Each provider module decodes its own error body into an `UpstreamFailure` (typed fields, never a
message substring); this module decides what the client sees. Only a rejected request (4xx)
shows the upstream's own message, which describes the client's input; authentication, rate
limit and server failures get our own words, because upstream text there can echo our key or
our account (OpenAI's 401 repeats part of the key).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass

from services.core.errors import GatewayError, Reason

STATUS_REASONS: Mapping[int, Reason] = {
    400: Reason.UPSTREAM_BAD_REQUEST,
    401: Reason.UPSTREAM_AUTH_FAILED,
    # Payment required (Anthropic's billing_error, Cohere's trial limits): the gateway's account
    # with the provider cannot pay. Like bad credentials it is ours to fix, and the next candidate
    # may serve; the provider's message (account details) is not passed on.
    402: Reason.UPSTREAM_AUTH_FAILED,
    403: Reason.UPSTREAM_AUTH_FAILED,
    404: Reason.UPSTREAM_BAD_REQUEST,
    408: Reason.UPSTREAM_TIMEOUT,
    # Conflict: OpenAI answers it for a request that collided with another; a retry may pass
    # (the OpenAI SDKs retry it too), so it is retriable, unlike the other 4xx.
    409: Reason.UPSTREAM_ERROR,
    422: Reason.UPSTREAM_BAD_REQUEST,
    429: Reason.UPSTREAM_RATE_LIMITED,
    500: Reason.UPSTREAM_ERROR,
    502: Reason.UPSTREAM_ERROR,
    503: Reason.UPSTREAM_UNAVAILABLE,
    504: Reason.UPSTREAM_TIMEOUT,
    529: Reason.UPSTREAM_OVERLOADED,
}

# Upstream error codes that mean the prompt does not fit the model's context window.
CONTEXT_LENGTH_CODES = frozenset({"context_length_exceeded"})

_OWN_WORDS: Mapping[Reason, str] = {
    Reason.UPSTREAM_AUTH_FAILED: "Provider '{provider}' rejected the gateway's credentials.",
    Reason.UPSTREAM_TIMEOUT: "Provider '{provider}' timed out.",
    Reason.UPSTREAM_RATE_LIMITED: "Provider '{provider}' is rate limiting requests; try again later.",
    Reason.UPSTREAM_ERROR: "Provider '{provider}' failed (HTTP {status}).",
    Reason.UPSTREAM_UNAVAILABLE: "Provider '{provider}' is unavailable.",
    Reason.UPSTREAM_OVERLOADED: "Provider '{provider}' is overloaded.",
}


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """An upstream error, decoded from the provider's wire format."""

    status: int
    message: str | None = None
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None  # seconds


def reason_for_status(status: int) -> Reason:
    """The reason of an upstream HTTP status; unlisted 4xx are bad requests, anything else an error."""
    reason = STATUS_REASONS.get(status)
    if reason is not None:
        return reason
    return Reason.UPSTREAM_BAD_REQUEST if 400 <= status < 500 else Reason.UPSTREAM_ERROR


def to_gateway_error(failure: UpstreamFailure, *, provider: str, upstream_model: str) -> GatewayError:
    """The GatewayError a client sees for `failure`."""
    reason = reason_for_status(failure.status)
    if reason is Reason.UPSTREAM_BAD_REQUEST:
        if failure.status == 404:
            message = f"The model '{upstream_model}' was not found at provider '{provider}'."
            return GatewayError(reason, message, code="model_not_found")
        if failure.code in CONTEXT_LENGTH_CODES:
            reason = Reason.CONTEXT_LENGTH_EXCEEDED
        message = failure.message or f"Provider '{provider}' rejected the request (HTTP {failure.status})."
        return GatewayError(reason, message, param=failure.param, code=failure.code)
    message = _OWN_WORDS[reason].format(provider=provider, status=failure.status)
    return GatewayError(reason, message, retry_after=failure.retry_after)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def incomplete_stream() -> GatewayError:
    """The error of a stream cut off before its proper end: what arrived is not the whole answer."""
    return GatewayError(Reason.UPSTREAM_ERROR, "The upstream stream ended before the answer was complete.")
