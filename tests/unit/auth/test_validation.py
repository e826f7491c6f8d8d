"""Validation of key settings, paging and the record ↔ message translation (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import json_format

from aggregator.auth.v1 import api_key_service_pb2
from services.auth.records import KeyRow, KeySettings, api_key_message, auth_record, timestamp
from services.auth.validation import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PageCursor,
    decode_page_token,
    encode_page_token,
    key_id,
    page_size,
    settings_from_create,
    validate_settings,
)
from services.core.errors import GatewayError, Reason

NOW = datetime(2030, 1, 1, tzinfo=UTC)
KEY_ID = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
ORG_ID = "0e1f4c9a-0000-4000-8000-000000000001"


def create(**fields: object) -> api_key_service_pb2.CreateApiKeyRequest:
    """A request as Envoy's transcoder would build it from JSON."""
    return json_format.ParseDict(fields, api_key_service_pb2.CreateApiKeyRequest())


def invalid(param: str, **fields: object) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        settings_from_create(create(**fields), now=NOW)
    assert caught.value.reason is Reason.INVALID_REQUEST
    assert caught.value.param == param
    assert caught.value.http_status == 400
    return caught.value


def test_defaults_are_member_all_models_no_limits_no_expiry() -> None:
    assert settings_from_create(create(), now=NOW) == KeySettings(role="member")


def test_every_field_is_carried_over() -> None:
    settings = settings_from_create(create(
        name="ci", role="admin", allowed_models=["gpt-4o-mini", "openai/gpt-4o", "gpt-4o-mini"],
        rate_limit_per_minute=60, rate_limit_per_hour=1000, rate_limit_per_day=5000, tokens_per_minute=90000,
        expires_at="2031-06-01T00:00:00Z"), now=NOW)
    assert settings == KeySettings(
        name="ci", role="admin", allowed_models=("gpt-4o-mini", "openai/gpt-4o"), rate_limit_per_minute=60,
        rate_limit_per_hour=1000, rate_limit_per_day=5000, tokens_per_minute=90000,
        expires_at=datetime(2031, 6, 1, tzinfo=UTC))


def test_null_allowed_models_means_every_model_and_empty_list_means_none() -> None:
    assert settings_from_create(create(allowed_models=None), now=NOW).allowed_models is None
    assert settings_from_create(create(allowed_models=[]), now=NOW).allowed_models == ()


def test_invalid_fields_name_their_param() -> None:
    assert "role" in invalid("role", role="owner").message
    invalid("name", name="x" * 201)
    invalid("rate_limit_per_minute", rate_limit_per_minute=0)
    invalid("rate_limit_per_hour", rate_limit_per_hour=-5)
    invalid("rate_limit_per_day", rate_limit_per_day=0)
    invalid("tokens_per_minute", tokens_per_minute=0)
    invalid("expires_at", expires_at="2029-12-31T23:59:59Z")
    invalid("expires_at", expires_at="2030-01-01T00:00:00Z")
    invalid("allowed_models", allowed_models=["gpt-4o", 3])
    invalid("allowed_models", allowed_models=[""])
    invalid("allowed_models", allowed_models=[["nested"]])


def test_name_of_200_characters_is_fine() -> None:
    assert settings_from_create(create(name="x" * 200), now=NOW).name == "x" * 200


def test_validate_settings_for_the_cli_takes_python_values() -> None:
    naive_future = datetime.now() + timedelta(days=1)  # naive: read as UTC
    settings = validate_settings(name="cli", role="", allowed_models=["a"], expires_at=naive_future,
                                 rate_limit_per_minute=5)
    assert settings.role == "member" and settings.expires_at is not None and settings.expires_at.tzinfo is UTC
    with pytest.raises(TypeError):
        validate_settings(requests_per_week=5)


def test_key_ids_must_be_uuids() -> None:
    assert key_id("6F9619FF-8B86-D011-B42D-00CF4FC964FF") == "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
    assert key_id("../etc") is None and key_id("") is None


def test_page_size_defaults_and_caps() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(5) == 5
    assert page_size(10_000) == MAX_PAGE_SIZE
    with pytest.raises(GatewayError) as caught:
        page_size(-1)
    assert caught.value.param == "page_size"


def test_page_tokens_round_trip_with_microseconds() -> None:
    cursor = PageCursor(datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), KEY_ID)
    token = encode_page_token(cursor)
    assert "=" not in token
    assert decode_page_token(token) == cursor
    assert decode_page_token("") is None


@pytest.mark.parametrize("token", ["!!!", "bm90LWEtY3Vyc29y", "MTIzOm5vdC1hLXV1aWQ"])
def test_bad_page_tokens_are_invalid_requests(token: str) -> None:
    with pytest.raises(GatewayError) as caught:
        decode_page_token(token)
    assert caught.value.reason is Reason.INVALID_REQUEST and caught.value.param == "page_token"


def row(settings: KeySettings) -> KeyRow:
    return KeyRow(id=KEY_ID, organization_id=ORG_ID, key_hash="ab" * 32, prefix="sk_live_abcd",
                  settings=settings, created_at=NOW)


def test_api_key_message_shows_the_plaintext_only_when_given() -> None:
    settings = KeySettings(name="n", role="admin", allowed_models=("m1",), rate_limit_per_minute=7,
                           expires_at=NOW + timedelta(days=1))
    listed = api_key_message(row(settings))
    assert not listed.HasField("key")
    as_json = json_format.MessageToDict(listed, preserving_proto_field_name=True)
    assert as_json == {"id": "6f9619ff-8b86-d011-b42d-00cf4fc964ff", "object": "api_key", "name": "n",
                       "role": "admin", "organization_id": "0e1f4c9a-0000-4000-8000-000000000001",
                       "prefix": "sk_live_abcd", "allowed_models": ["m1"], "rate_limit_per_minute": 7,
                       "expires_at": "2030-01-02T00:00:00Z", "created_at": "2030-01-01T00:00:00Z"}
    assert api_key_message(row(settings), "sk_live_secret").key == "sk_live_secret"


def test_absent_settings_stay_absent_on_the_wire() -> None:
    message = api_key_message(row(KeySettings()))
    for field in ("allowed_models", "rate_limit_per_minute", "tokens_per_minute", "expires_at", "key"):
        assert not message.HasField(field), field


def test_auth_record_carries_the_principal_and_expiry() -> None:
    record = auth_record(row(KeySettings(role="member", allowed_models=("a", "b"), tokens_per_minute=100,
                                         expires_at=NOW)))
    p = record.principal
    assert (p.api_key_id, p.organization_id, p.role) == ("6f9619ff-8b86-d011-b42d-00cf4fc964ff",
                                                         "0e1f4c9a-0000-4000-8000-000000000001", "member")
    assert list(p.allowed_models) == ["a", "b"] and p.tokens_per_minute == 100
    assert not p.HasField("rate_limit_per_minute")
    assert record.expired(NOW.timestamp()) and not record.expired(NOW.timestamp() - 1)
    assert not auth_record(row(KeySettings())).principal.HasField("allowed_models")
    assert not auth_record(row(KeySettings())).expired(1e12)


def test_timestamp_is_utc() -> None:
    assert timestamp(NOW).seconds == int(NOW.timestamp())
    assert timestamp(NOW.astimezone(timezone(timedelta(hours=5)))) == timestamp(NOW)
