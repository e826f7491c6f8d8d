"""Validation of key-management input: pure functions that answer values or raise
GatewayError(INVALID_REQUEST, message, param=<field>). No I/O."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2

from aggregator.auth.v1 import api_key_service_pb2
from services.auth.records import LIMIT_FIELDS, ROLES, KeySettings, to_datetime
from services.core.errors import GatewayError, Reason

MAX_NAME_LENGTH = 200
MAX_MODELS = 1000
MAX_MODEL_ID_LENGTH = 256
MAX_LIMIT = 2**31 - 1
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 100


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def validate_role(role: str | None) -> str:
    """'admin' or 'member'; empty means 'member'."""
    if not role:
        return "member"
    if role not in ROLES:
        raise _invalid(f"Invalid role {role[:40]!r}: expected 'admin' or 'member'.", "role")
    return role


def validate_models(models: Iterable[Any] | None) -> tuple[str, ...] | None:
    """Model ids as a tuple without duplicates (order kept); None (every model) stays None."""
    if models is None:
        return None
    items = list(models)
    if len(items) > MAX_MODELS:
        raise _invalid(f"allowed_models may list at most {MAX_MODELS} models.", "allowed_models")
    if not all(isinstance(m, str) and 0 < len(m) <= MAX_MODEL_ID_LENGTH for m in items):
        raise _invalid("allowed_models must be a list of non-empty model id strings.", "allowed_models")
    return tuple(dict.fromkeys(items))


def models_from_list_value(value: struct_pb2.ListValue) -> list[Any]:
    """The Python items of a ListValue; non-strings are kept as non-strings so they fail validation."""
    return [v.string_value if v.WhichOneof("kind") == "string_value" else v for v in value.values]


def validate_settings(*, name: str = "", role: str | None = None, allowed_models: Iterable[Any] | None = None,
                      expires_at: datetime | None = None, now: datetime | None = None,
                      **limits: int | None) -> KeySettings:
    """Checks every field of a key's settings; raises GatewayError(INVALID_REQUEST) on the first bad one."""
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(f"name must be at most {MAX_NAME_LENGTH} characters.", "name")
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise TypeError(f"unknown limit fields: {sorted(unknown)}")
    for field, value in limits.items():
        if value is not None and not 1 <= value <= MAX_LIMIT:
            raise _invalid(f"{field} must be a positive integer.", field)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= (now or datetime.now(UTC)):
            raise _invalid("expires_at must be in the future.", "expires_at")
    return KeySettings(name=name, role=validate_role(role), allowed_models=validate_models(allowed_models),
                       expires_at=expires_at, **limits)


def settings_from_create(request: api_key_service_pb2.CreateApiKeyRequest,
                         now: datetime | None = None) -> KeySettings:
    """The validated settings of a CreateApiKeyRequest."""
    models = models_from_list_value(request.allowed_models) if request.HasField("allowed_models") else None
    expires = to_datetime(request.expires_at) if request.HasField("expires_at") else None
    limits = {f: getattr(request, f) if request.HasField(f) else None for f in LIMIT_FIELDS}
    return validate_settings(name=request.name, role=request.role, allowed_models=models, expires_at=expires,
                             now=now, **limits)


def key_id(value: str) -> str | None:
    """The canonical form of a key id, or None when it is not a UUID (so it names no key)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page of keys (newest first) resumes: after this (created_at, id)."""

    created_at: datetime
    id: str


def page_size(value: int) -> int:
    """0 means the default; at most MAX_PAGE_SIZE."""
    if value < 0:
        raise _invalid("page_size must not be negative.", "page_size")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(cursor: PageCursor) -> str:
    # Microseconds since the epoch keep PostgreSQL's full timestamp precision.
    micros = (cursor.created_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    raw = f"{micros}:{cursor.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> PageCursor | None:
    """The cursor of a page token; None for an empty token."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        micros, _, ident = raw.partition(":")
        created = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))
        canonical = key_id(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        canonical = None
    if canonical is None:
        raise _invalid("Invalid page_token.", "page_token")
    return PageCursor(created, canonical)
