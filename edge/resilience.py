"""The rules of upstream attempts (docs/resilience.md): one deadline per request, retries with
backoff on one candidate, and what a retriable failure allows next.

    Deadline       when the request's time is spent, from the configured `total_timeout_s` or the
                   client's shorter `x-aggregator-timeout-ms`; 504 (UPSTREAM_TIMEOUT) once spent
    retry_delay()  how long to wait before trying the same candidate again, or None to move on
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from services.adapters import token_estimate
from services.core.config import Resilience
from services.core.errors import GatewayError, Reason

TIMEOUT_HEADER = "x-aggregator-timeout-ms"  # a client's own deadline, shorter than the configured one
HEDGE_HEADER = "x-aggregator-hedge-ms"  # a client's hedging threshold for this request; 0: none
HEDGE_PERCENTILE_VALUE = re.compile(r"p([5-9][0-9])")  # the header's other form: p50 .. p99
ATTEMPTS_HEADER = "x-aggregator-attempts"
PROVIDER_HEADER = "x-aggregator-provider"
MAX_HEADER_MS = 24 * 3600 * 1000


def may_try_next(error: GatewayError) -> bool:
    """Whether a candidate's failure before its first content lets the next candidate try: the
    retriable upstream failures, and a parameter this provider cannot honour."""
    return error.retriable or error.reason is Reason.UNSUPPORTED_PARAMETER


def output_tokens(record: Any) -> int:
    """The tokens an attempt generated: its usage, else the estimate from its output (the
    RequestRecord's; docs/ledger.md §3)."""
    if record.usage is not None:
        return int(record.usage.completion_tokens)
    return token_estimate.completion_tokens(record.content_chars, record.content_events)


def deadline_spent() -> GatewayError:
    """The error of a request whose deadline passed before an answer began."""
    return GatewayError(Reason.UPSTREAM_TIMEOUT,
                        "The request's deadline passed before any provider answered.")


def header_ms(value: str | None, name: str) -> int | None:
    """A whole number of milliseconds from a request header; None when absent; 400 when malformed."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or int(value) > MAX_HEADER_MS:
        raise GatewayError(Reason.INVALID_REQUEST,
                           f"The header {name} must be a whole number of milliseconds.", param=name)
    return int(value)


@dataclass(slots=True)
class Deadline:
    """The monotonic instant a request's time runs out."""

    at: float

    @classmethod
    def of(cls, policy: Resilience, requested_ms: int | None, started: float | None = None) -> Deadline:
        """The configured total, shortened (never lengthened: Envoy's route timeout is the
        configured one) by the client's `x-aggregator-timeout-ms`."""
        total = policy.total_timeout_s
        if requested_ms:
            total = min(total, requested_ms / 1000.0)
        return cls((time.monotonic() if started is None else started) + total)

    def remaining(self) -> float:
        """Seconds left; 504 (UPSTREAM_TIMEOUT) when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise deadline_spent()
        return left

    def remaining_ms(self) -> int:
        return max(1, int(self.remaining() * 1000))


def retry_delay(policy: Resilience, error: GatewayError, retry: int, deadline: Deadline,
                rng: random.Random | None = None) -> float | None:
    """Seconds to wait before retry number `retry` (1-based) on the same candidate, or None to
    move on: no retries left, a failure the same provider would repeat, a `Retry-After` beyond
    `max_retry_after_s`, or a wait that would not leave the deadline any time."""
    if retry > policy.retries or not error.retriable:
        return None
    if error.retry_after is not None:
        if error.retry_after > policy.max_retry_after_s:
            return None
        delay = error.retry_after
    else:  # exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")
        ceiling = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (retry - 1))
        delay = (rng or random).uniform(0, ceiling)
    return delay if delay < deadline.at - time.monotonic() else None


def request_policy(policy: Resilience, hedge: str | None) -> Resilience:
    """The model's policy with the client's `x-aggregator-hedge-ms`, when it sent one: a whole
    number of ms is a fixed threshold (0: no hedging), `p50` .. `p99` hedges after that percentile
    of the first candidate's observed times to first token, the model's `hedge_after_ms` until it
    has enough (docs/resilience.md §4); anything else is a 400 naming the header."""
    if hedge is None:
        return policy
    percentile = HEDGE_PERCENTILE_VALUE.fullmatch(hedge.strip())
    if percentile is not None:
        return replace(policy, hedge_percentile=int(percentile[1]))
    try:
        hedge_ms = header_ms(hedge, HEDGE_HEADER)
    except GatewayError:
        raise GatewayError(Reason.INVALID_REQUEST, f"The header {HEDGE_HEADER} must be a whole number of "
                           "milliseconds or a percentile from p50 to p99.", param=HEDGE_HEADER) from None
    return replace(policy, hedge_after_ms=hedge_ms or 0, hedge_percentile=0)

