"""Update and rotation input (validation.py) and the grace expiry of a rotated-out secret (records.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import json_format

from aggregator.auth.v1 import api_key_service_pb2
from services.auth.records import KeyRow, KeySettings, api_key_message, auth_record
from services.auth.validation import (
    DEFAULT_GRACE_PERIOD_S,
    MAX_GRACE_PERIOD_S,
    changes_from_update,
    grace_period,
    validate_scopes,
)
from services.core.errors import GatewayError

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def changes(fields: dict[str, Any]) -> dict[str, Any]:
    request = json_format.ParseDict({"id": "k", **fields}, api_key_service_pb2.UpdateApiKeyRequest())
    return changes_from_update(request, now=NOW)


def test_absent_fields_are_not_changes_and_null_clears() -> None:
    assert changes({}) == {}
    assert changes({"name": ""}) == {"name": ""}
    assert changes({"allowed_models": None, "rate_limit_per_minute": None, "expires_at": None,
                    "scopes": None}) == {"allowed_models": None, "rate_limit_per_minute": None,
                                         "expires_at": None, "scopes": ()}
    assert changes({"allowed_models": [], "scopes": []}) == {"allowed_models": (), "scopes": ()}
    assert changes({"role": "admin", "tokens_per_minute": 10.0, "expires_at": "2030-01-02T00:00:00+01:00",
                    "scopes": ["read:models", "inference", "read:models"]}) == {
        "role": "admin", "tokens_per_minute": 10, "scopes": ("read:models", "inference"),
        "expires_at": datetime(2030, 1, 1, 23, tzinfo=UTC)}


@pytest.mark.parametrize(("fields", "param"), [
    ({"role": "root"}, "role"),
    ({"rate_limit_per_minute": -1}, "rate_limit_per_minute"),
    ({"rate_limit_per_minute": 1e300}, "rate_limit_per_minute"),
    ({"rate_limit_per_minute": True}, "rate_limit_per_minute"),
    ({"expires_at": "2029-12-31T23:59:59Z"}, "expires_at"),
    ({"expires_at": "2030-02-01"}, "expires_at"),
    ({"allowed_models": {"a": 1}}, "allowed_models"),
    ({"scopes": ["inferense"]}, "scopes"),
    ({"scopes": ["x" * 129]}, "scopes"),
])
def test_bad_updates_name_their_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        changes(fields)
    assert caught.value.param == param


def test_scopes_shape() -> None:
    assert validate_scopes(["inference", "read:models", "inference"]) == ("inference", "read:models")
    with pytest.raises(GatewayError):
        validate_scopes([f"p{i}" for i in range(65)])
    with pytest.raises(GatewayError):
        validate_scopes([None])


def test_grace_period_bounds() -> None:
    request = api_key_service_pb2.RotateApiKeyRequest(id="k")
    assert grace_period(request) == DEFAULT_GRACE_PERIOD_S == 86_400
    for seconds in (0, 1, MAX_GRACE_PERIOD_S):
        request.grace_period_seconds = seconds
        assert grace_period(request) == seconds
    for seconds in (-1, MAX_GRACE_PERIOD_S + 1):
        request.grace_period_seconds = seconds
        with pytest.raises(GatewayError):
            grace_period(request)


def row(expires_at: datetime | None, grace_end: datetime | None, by_previous: bool) -> KeyRow:
    return KeyRow(id="k", organization_id="o", key_hash="h", prefix="sk_live_abcd",
                  settings=KeySettings(expires_at=expires_at, scopes=("inference",)), created_at=NOW,
                  previous_key_expires_at=grace_end, found_by_previous_key=by_previous)


def test_a_rotated_out_secret_expires_with_its_grace_period() -> None:
    grace_end = datetime.now(UTC) + timedelta(hours=1)
    later, sooner = grace_end + timedelta(hours=1), grace_end - timedelta(minutes=1)
    assert auth_record(row(None, grace_end, False)).expires_at is None  # the current secret
    assert auth_record(row(None, grace_end, True)).expires_at == grace_end.timestamp()
    assert auth_record(row(later, grace_end, True)).expires_at == grace_end.timestamp()
    assert auth_record(row(sooner, grace_end, True)).expires_at == sooner.timestamp()
    record = auth_record(row(None, grace_end, True))
    assert list(record.principal.scopes) == ["inference"]
    message = api_key_message(row(None, grace_end, False))
    assert message.previous_key_expires_at.ToDatetime(tzinfo=UTC) == grace_end
    assert list(message.scopes) == ["inference"] and not message.HasField("key")
    ended = datetime.now(UTC) - timedelta(seconds=1)  # a grace period that is over is not shown
    assert not api_key_message(row(None, ended, False)).HasField("previous_key_expires_at")
