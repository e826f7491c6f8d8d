"""cohere_wire: Cohere's error bodies and statuses, its usage counts (no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.adapters.cohere_wire import CohereErrorBody, UsageCounts, count, path
from services.adapters.upstream_errors import to_gateway_error
from services.core.errors import Reason
from tests.fakes import cohere_failures


@pytest.mark.parametrize("raw, expected", [
    (b'{"message": "invalid request: bad"}', CohereErrorBody("invalid request: bad")),
    (b'{"id": "e-1", "message": "nope"}', CohereErrorBody("nope", "e-1")),
    (b'{"message": {"nested": 1}, "id": 3}', CohereErrorBody()),
    (b'["message"]', CohereErrorBody()),
    (b"<html>Bad Gateway</html>", CohereErrorBody()),
])
def test_error_body_decoding(raw: bytes, expected: CohereErrorBody) -> None:
    assert CohereErrorBody.decode(raw) == expected


def gateway_error(status: int, body: Any, retry_after: float | None = None) -> Any:
    failure = CohereErrorBody.decode(orjson.dumps(body)).failure(status, retry_after)
    return to_gateway_error(failure, provider="co", upstream_model="command-a")


@pytest.mark.parametrize("preset, reason, shows_message", [
    (cohere_failures.bad_request(), Reason.UPSTREAM_BAD_REQUEST, True),
    (cohere_failures.unprocessable(), Reason.UPSTREAM_BAD_REQUEST, True),
    (cohere_failures.context_length_exceeded(), Reason.UPSTREAM_BAD_REQUEST, True),
    (cohere_failures.unauthorized(), Reason.UPSTREAM_AUTH_FAILED, False),
    (cohere_failures.forbidden(), Reason.UPSTREAM_AUTH_FAILED, False),
    (cohere_failures.payment_required(), Reason.UPSTREAM_AUTH_FAILED, False),
    (cohere_failures.invalid_token(), Reason.UPSTREAM_AUTH_FAILED, False),
    (cohere_failures.client_closed(), Reason.UPSTREAM_ERROR, False),
    (cohere_failures.rate_limited(), Reason.UPSTREAM_RATE_LIMITED, False),
    (cohere_failures.server_error(), Reason.UPSTREAM_ERROR, False),
    (cohere_failures.server_error(501), Reason.UPSTREAM_ERROR, False),
    (cohere_failures.unavailable(), Reason.UPSTREAM_UNAVAILABLE, False),
    (cohere_failures.timeout(), Reason.UPSTREAM_TIMEOUT, False),
])
def test_statuses_map_through_the_one_table(preset: Any, reason: Reason, shows_message: bool) -> None:
    body = CohereErrorBody.decode(preset.body)
    error = to_gateway_error(body.failure(preset.status), provider="co", upstream_model="command-a")
    assert error.reason is reason
    assert (error.message == body.message) is shows_message
    # Account details Cohere puts in auth, billing and rate-limit messages never reach clients.
    assert "org-secret" not in error.message and "sk-" not in error.message
    assert error.param is None and error.code in (None, "model_not_found")


def test_not_found_names_the_model_and_retry_after_is_kept() -> None:
    error = gateway_error(404, {"message": "model 'command-x' not found"})
    assert (error.reason, error.code) == (Reason.UPSTREAM_BAD_REQUEST, "model_not_found")
    assert "command-a" in error.message
    assert gateway_error(429, {"message": "slow down"}, 4.0).retry_after == 4.0


def test_cohere_only_statuses_keep_their_meaning() -> None:
    assert CohereErrorBody().failure(402).status == 402  # the shared table knows payment required
    assert CohereErrorBody().failure(498).status == 401
    assert CohereErrorBody().failure(499).status == 500
    assert CohereErrorBody().failure(418).status == 418


def test_usage_counts() -> None:
    both = {"billed_units": {"input_tokens": 5, "output_tokens": 2},
            "tokens": {"input_tokens": 12, "output_tokens": 2}, "cached_tokens": 3}
    assert UsageCounts.decode(both) == UsageCounts(5, 2, 3)
    partial = {"billed_units": {"input_tokens": 5}, "tokens": {"input_tokens": 12, "output_tokens": 6}}
    assert UsageCounts.decode(partial) == UsageCounts(5, 6, 0)
    assert UsageCounts.decode({}) == UsageCounts(0, 0, 0)
    assert UsageCounts.decode("nothing") is None


@pytest.mark.parametrize("value, expected", [(3, 3), (3.0, 3), (2.5, 3), (-1, None), (True, None),
                                             ("4", None), (float("nan"), None), (None, None)])
def test_count(value: Any, expected: int | None) -> None:
    assert count({"n": value}, "n") == expected


def test_path() -> None:
    assert path({"a": {"b": 1}}, "a", "b") == 1
    assert path({"a": [1]}, "a", "b") is None and path(None, "a") is None
