"""The auth domain's plain records and their translation to the wire messages.

`KeySettings` is what an administrator chooses for a key (validated by validation.py), `KeyRow`
a stored key, `AuthRecord` what the authentication cache holds for one key hash.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from aggregator.auth.v1 import api_key_pb2, auth_service_pb2
from services.core.money import decimal_str

ROLES = ("admin", "member")
# The optional per-key limits, named alike in the table, the records and every message.
LIMIT_FIELDS = ("rate_limit_per_minute", "rate_limit_per_hour", "rate_limit_per_day", "tokens_per_minute")


@dataclass(frozen=True, slots=True)
class KeySettings:
    """A key's administrator-chosen settings. `allowed_models` None means every model."""

    name: str = ""
    role: str = "member"
    allowed_models: tuple[str, ...] | None = None
    rate_limit_per_minute: int | None = None
    rate_limit_per_hour: int | None = None
    rate_limit_per_day: int | None = None
    tokens_per_minute: int | None = None
    expires_at: datetime | None = None
    # Permission names narrowing the role; empty means none (services/auth/permissions.py
    # interprets them, docs/reference.md §4).
    scopes: tuple[str, ...] = ()
    cache: bool = False  # its requests use the response cache without asking (docs/limits.md)
    max_budget_usd: Decimal | None = None  # at most this per budget_period (docs/limits.md, "Budgets")
    budget_period: str | None = None  # "daily", "monthly" or "total"; set with max_budget_usd
    provider_policy: dict[str, Any] | None = None  # default provider preferences (docs/routing.md §2)

    @classmethod
    def from_row(cls, row: Any) -> KeySettings:
        """From a database row holding the api_keys columns of the same names."""
        models = row["allowed_models"]
        values = {f.name: row[f.name] for f in fields(cls) if f.name not in ("allowed_models", "scopes")}
        return cls(allowed_models=None if models is None else tuple(models),
                   scopes=tuple(row["scopes"] or ()), **values)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A stored API key (never its plaintext)."""

    id: str
    organization_id: str
    key_hash: str
    prefix: str
    settings: KeySettings
    created_at: datetime
    revoked_at: datetime | None = None
    # Until when the secret replaced by the last rotation still works (docs/reference.md §4).
    previous_key_expires_at: datetime | None = None
    # Set only on a row found by that replaced secret (repository.find_live_key): the secret
    # stops at the earlier of this and the key's own expires_at.
    found_by_previous_key: bool = False

    @classmethod
    def from_row(cls, row: Any, *, found_by_previous_key: bool = False) -> KeyRow:
        return cls(id=str(row["id"]), organization_id=str(row["organization_id"]), key_hash=row["key_hash"],
                   prefix=row["prefix"], settings=KeySettings.from_row(row), created_at=row["created_at"],
                   revoked_at=row["revoked_at"], previous_key_expires_at=row["previous_key_expires_at"],
                   found_by_previous_key=found_by_previous_key)

    def secret_expires_at(self) -> datetime | None:
        """When the secret this row was found by stops working; None: never."""
        ends = [self.settings.expires_at]
        if self.found_by_previous_key:
            ends.append(self.previous_key_expires_at)
        known = [e for e in ends if e is not None]
        return min(known) if known else None


@dataclass(frozen=True, slots=True)
class AuthRecord:
    """A live key as the authentication cache holds it. The principal is shared between requests:
    read it, never modify it."""

    principal: auth_service_pb2.Principal
    expires_at: float | None  # POSIX seconds; None: never

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def list_value(items: tuple[str, ...] | list[str]) -> struct_pb2.ListValue:
    """A ListValue of strings."""
    value = struct_pb2.ListValue()
    value.extend(items)
    return value


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def to_datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _limits(settings: KeySettings) -> dict[str, int]:
    return {name: value for name in LIMIT_FIELDS if (value := getattr(settings, name)) is not None}


def api_key_message(row: KeyRow, plaintext: str | None = None) -> api_key_pb2.ApiKey:
    """The public `api_key` object, with the stored prefix and never the secret; `plaintext` only
    in the answers that create or rotate the key."""
    s = row.settings
    message = api_key_pb2.ApiKey(id=row.id, object="api_key", name=s.name, role=s.role,
                                 organization_id=row.organization_id, prefix=row.prefix,
                                 created_at=timestamp(row.created_at), scopes=s.scopes, cache=s.cache,
                                 **_limits(s))
    if s.max_budget_usd is not None:
        message.max_budget_usd = decimal_str(s.max_budget_usd)
        message.budget_period = s.budget_period or ""
    if s.provider_policy:
        message.provider.update(s.provider_policy)
    if s.allowed_models is not None:
        message.allowed_models.CopyFrom(list_value(s.allowed_models))
    if s.expires_at is not None:
        message.expires_at.CopyFrom(timestamp(s.expires_at))
    if row.previous_key_expires_at is not None and row.previous_key_expires_at > datetime.now(UTC):
        message.previous_key_expires_at.CopyFrom(timestamp(row.previous_key_expires_at))
    if plaintext is not None:
        message.key = plaintext
    return message


def auth_record(row: KeyRow) -> AuthRecord:
    """The cache entry for a live key. A row found by a rotated-out secret expires with its grace
    period, so a cached entry for that secret stops on time (docs/reference.md §4)."""
    s = row.settings
    principal = auth_service_pb2.Principal(organization_id=row.organization_id, api_key_id=row.id,
                                           role=s.role, scopes=s.scopes, cache=s.cache, **_limits(s))
    if s.max_budget_usd is not None:
        principal.max_budget_usd = decimal_str(s.max_budget_usd)
        principal.budget_period = s.budget_period or ""
    if s.provider_policy:
        principal.provider.update(s.provider_policy)
    if s.allowed_models is not None:
        principal.allowed_models.CopyFrom(list_value(s.allowed_models))
    ends = row.secret_expires_at()
    return AuthRecord(principal=principal, expires_at=None if ends is None else ends.timestamp())
