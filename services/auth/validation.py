"""Validation of key-management input: pure functions that answer values or raise
GatewayError(INVALID_REQUEST, message, param=<field>). No I/O."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from aggregator.auth.v1 import api_key_service_pb2
from services.auth.permissions import PERMISSIONS
from services.auth.records import LIMIT_FIELDS, ROLES, KeySettings, to_datetime
from services.core.errors import GatewayError, Reason, quote
from services.routing import policy

MAX_NAME_LENGTH = 200
MAX_MODELS = 1000
MAX_MODEL_ID_LENGTH = 256
MAX_LIMIT = 2**31 - 1
# Scopes are stored and shaped here; their meaning is services/auth/permissions.py's.
MAX_SCOPES = 64
MAX_SCOPE_LENGTH = 128
# The grace period of a rotated-out secret (docs/reference.md §4): long enough to roll a secret
# out to every client, short enough that a leaked one dies soon.
DEFAULT_GRACE_PERIOD_S = 24 * 3600
MAX_GRACE_PERIOD_S = 7 * 24 * 3600
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


def validate_scopes(scopes: Iterable[Any]) -> tuple[str, ...]:
    """Permission names as a tuple without duplicates (order kept): at most MAX_SCOPES names of the
    permission table (services/auth/permissions.py). A typo is refused, not stored: a key narrowed
    to a name that means nothing would silently lose every permission."""
    items = list(scopes)
    if len(items) > MAX_SCOPES:
        raise _invalid(f"scopes may list at most {MAX_SCOPES} permissions.", "scopes")
    if not all(isinstance(s, str) and 0 < len(s) <= MAX_SCOPE_LENGTH for s in items):
        raise _invalid(f"scopes must be a list of permission names (strings of 1 to {MAX_SCOPE_LENGTH} "
                       "characters).", "scopes")
    unknown = next((s for s in items if s not in PERMISSIONS), None)
    if unknown is not None:
        raise _invalid(f"Unknown permission {quote(unknown)} in scopes; permissions are: "
                       f"{', '.join(PERMISSIONS)}.", "scopes")
    return tuple(dict.fromkeys(items))


def models_from_list_value(value: struct_pb2.ListValue) -> list[Any]:
    """The Python items of a ListValue; non-strings are kept as non-strings so they fail validation."""
    return [v.string_value if v.WhichOneof("kind") == "string_value" else v for v in value.values]


def _validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(f"name must be at most {MAX_NAME_LENGTH} characters.", "name")
    return name


BUDGET_PERIODS = ("daily", "monthly", "total")
MAX_BUDGET_USD = Decimal("1000000000")


def validate_budget(value: Any, param: str = "max_budget_usd") -> Decimal:
    """A budget in USD: a decimal string (or number), positive, at most 10 decimals."""
    try:
        amount = Decimal(str(value)) if isinstance(value, (str, int, float)) and not isinstance(value, bool) \
            else Decimal("NaN")
    except InvalidOperation:
        amount = Decimal("NaN")
    exponent = amount.as_tuple().exponent
    if not amount.is_finite() or amount <= 0 or amount > MAX_BUDGET_USD or not isinstance(exponent, int) \
            or exponent < -10:
        raise _invalid(f"{param} must be a positive decimal string of at most 10 decimals "
                       "(\"25.00\"), or null for none.", param)
    return amount


def validate_budget_period(value: str) -> str:
    if value not in BUDGET_PERIODS:
        raise _invalid(f"Invalid budget_period {quote(value)}: expected 'daily', 'monthly' or 'total'.",
                       "budget_period")
    return value


def _validate_limit(field: str, value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_LIMIT:
        raise _invalid(f"{field} must be a positive integer.", field)
    return value


def _validate_expiry(expires_at: datetime | None, now: datetime | None) -> datetime | None:
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if expires_at <= (now or datetime.now(UTC)):
        raise _invalid("expires_at must be in the future.", "expires_at")
    return expires_at


def validate_settings(*, name: str = "", role: str | None = None, allowed_models: Iterable[Any] | None = None,
                      expires_at: datetime | None = None, now: datetime | None = None,
                      scopes: Iterable[Any] = (), cache: bool = False, max_budget_usd: Any = None,
                      budget_period: str | None = None, provider_policy: dict[str, Any] | None = None,
                      **limits: int | None) -> KeySettings:
    """Checks every field of a key's settings; raises GatewayError(INVALID_REQUEST) on the first bad one."""
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise TypeError(f"unknown limit fields: {sorted(unknown)}")
    checked = {field: _validate_limit(field, value) for field, value in limits.items()}
    budget = None if max_budget_usd is None else validate_budget(max_budget_usd)
    period = None if budget_period is None else validate_budget_period(budget_period)
    if period is not None and budget is None:
        raise _invalid("budget_period needs a max_budget_usd.", "budget_period")
    return KeySettings(name=_validate_name(name), role=validate_role(role),
                       allowed_models=validate_models(allowed_models),
                       expires_at=_validate_expiry(expires_at, now), scopes=validate_scopes(scopes),
                       cache=bool(cache), max_budget_usd=budget,
                       budget_period=None if budget is None else period or "monthly",
                       provider_policy=validate_provider_policy(provider_policy), **checked)


def validate_provider_policy(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Default provider preferences, checked as a request's are (the same 400s, naming
    `provider.<field>`); `{}` or None: none (docs/routing.md §2)."""
    if not raw:
        return None
    policy.parse(raw)
    return raw


def provider_policy_of(request: Any) -> dict[str, Any] | None:
    """The `provider` Struct of a create or update request as JSON values; None when absent."""
    return json_format.MessageToDict(request.provider) if request.HasField("provider") else None


def settings_from_create(request: api_key_service_pb2.CreateApiKeyRequest,
                         now: datetime | None = None) -> KeySettings:
    """The validated settings of a CreateApiKeyRequest."""
    models = models_from_list_value(request.allowed_models) if request.HasField("allowed_models") else None
    expires = to_datetime(request.expires_at) if request.HasField("expires_at") else None
    limits = {f: getattr(request, f) if request.HasField(f) else None for f in LIMIT_FIELDS}
    budget = request.max_budget_usd if request.HasField("max_budget_usd") else None
    period = request.budget_period if request.HasField("budget_period") else None
    return validate_settings(name=request.name, role=request.role, allowed_models=models, expires_at=expires,
                             now=now, scopes=request.scopes, cache=request.cache, max_budget_usd=budget,
                             budget_period=period, provider_policy=provider_policy_of(request), **limits)


def _nullable(value: struct_pb2.Value) -> Any:
    """The Python value of a JSON value: None for null, else the Value itself to be checked."""
    return None if value.WhichOneof("kind") == "null_value" else value


def _list_items(value: struct_pb2.Value, field: str, what: str) -> list[Any]:
    if value.WhichOneof("kind") != "list_value":
        raise _invalid(f"{field} must be a list of {what}, or null.", field)
    return models_from_list_value(value.list_value)


def _limit_of(value: struct_pb2.Value, field: str) -> int | None:
    if _nullable(value) is None:
        return None
    number = value.number_value
    if value.WhichOneof("kind") != "number_value" or not number.is_integer():
        raise _invalid(f"{field} must be a positive integer, or null for no limit.", field)
    return _validate_limit(field, int(number))


def _expiry_of(value: struct_pb2.Value, now: datetime | None) -> datetime | None:
    if _nullable(value) is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    try:
        if value.WhichOneof("kind") != "string_value":
            raise ValueError("not a string")
        stamp.FromJsonString(value.string_value)
    except ValueError:
        raise _invalid("expires_at must be an RFC 3339 timestamp (2030-01-01T00:00:00Z), or null "
                       "for never.", "expires_at") from None
    return _validate_expiry(to_datetime(stamp), now)


def changes_from_update(request: api_key_service_pb2.UpdateApiKeyRequest,
                        now: datetime | None = None) -> dict[str, Any]:
    """The validated changes of an UpdateApiKeyRequest, by api_keys column: only the fields the
    request carries (AIP-134 partial update); a nullable field sent as null maps to None (or to no
    scopes). Raises GatewayError(INVALID_REQUEST) naming the first bad field."""
    changes: dict[str, Any] = {}
    if request.HasField("name"):
        changes["name"] = _validate_name(request.name)
    if request.HasField("role"):
        if request.role not in ROLES:
            raise _invalid(f"Invalid role {quote(request.role)}: expected 'admin' or 'member'.", "role")
        changes["role"] = request.role
    if request.HasField("allowed_models"):
        models = _nullable(request.allowed_models)
        changes["allowed_models"] = None if models is None else validate_models(
            _list_items(request.allowed_models, "allowed_models", "model ids"))
    for field in LIMIT_FIELDS:
        if request.HasField(field):
            changes[field] = _limit_of(getattr(request, field), field)
    if request.HasField("expires_at"):
        changes["expires_at"] = _expiry_of(request.expires_at, now)
    if request.HasField("scopes"):
        scopes = _nullable(request.scopes)
        changes["scopes"] = () if scopes is None else validate_scopes(
            _list_items(request.scopes, "scopes", "permission names"))
    if request.HasField("cache"):
        changes["cache"] = request.cache
    if request.HasField("max_budget_usd"):
        budget = _nullable(request.max_budget_usd)
        changes["max_budget_usd"] = None if budget is None else validate_budget(
            request.max_budget_usd.string_value if request.max_budget_usd.WhichOneof("kind") == "string_value"
            else None)
    if request.HasField("budget_period"):
        changes["budget_period"] = validate_budget_period(request.budget_period)
    if request.HasField("provider"):
        changes["provider_policy"] = validate_provider_policy(provider_policy_of(request))
    return changes


def grace_period(request: api_key_service_pb2.RotateApiKeyRequest) -> int:
    """The rotation's grace period in seconds: DEFAULT_GRACE_PERIOD_S when absent, else 0 to
    MAX_GRACE_PERIOD_S."""
    if not request.HasField("grace_period_seconds"):
        return DEFAULT_GRACE_PERIOD_S
    seconds = request.grace_period_seconds
    if not 0 <= seconds <= MAX_GRACE_PERIOD_S:
        raise _invalid(f"grace_period_seconds must be between 0 and {MAX_GRACE_PERIOD_S} (7 days).",
                       "grace_period_seconds")
    return seconds


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
