"""The audit trail's pure parts (docs/architecture.md §2.11): the client's address, redaction of
secrets, the AuditEvent of an entry and back, the refusal recorded by audited_check, and the
validation of GET /v1/audit-log's query."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from aggregator.auth.v1 import audit_log_service_pb2, auth_service_pb2
from services.auth.audit import AuditTrail, audited_check, entry_of
from services.auth.audit_repository import AuditOrigin, client_ip, redact
from services.auth.audit_servicer import query_of
from services.core.errors import GatewayError, Reason


class Context:
    def __init__(self, *metadata: tuple[str, str], peer: str = "ipv4:10.0.0.1:5555") -> None:
        self._metadata = metadata
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer


class Recorder(AuditTrail):
    def __init__(self) -> None:
        super().__init__(None)
        self.entries: list[dict[str, Any]] = []

    def record_soon(self, **entry: Any) -> None:
        self.entries.append(entry)


def test_client_ip_is_the_address_envoy_appended() -> None:
    assert client_ip("1.1.1.1, 203.0.113.9") == "203.0.113.9"
    assert client_ip("203.0.113.9") == "203.0.113.9"
    assert client_ip("2001:db8::1") == "2001:db8::1"
    assert client_ip(None, "ipv4:10.1.2.3:4567") == "10.1.2.3"
    assert client_ip(None, "ipv6:[::1]:4567") == "::1"
    assert client_ip("not-an-ip", "unix:/run/x.sock") is None
    assert client_ip("garbage", "ipv4:10.1.2.3:1") == "10.1.2.3"


def test_redact_drops_secrets_at_any_depth() -> None:
    cleaned = redact({"name": "ci", "key": "sk_live_x", "key_hash": "ab" * 32, "Password": "p",
                      "nested": {"token": "t", "role": "admin", "list": [{"secret": "s", "ok": 1}]},
                      "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "models": ("a", "b")})
    assert cleaned == {"name": "ci", "nested": {"role": "admin", "list": [{"ok": 1}]},
                       "when": "2026-01-02T03:04:05Z", "models": ["a", "b"]}
    assert redact(None) is None


def test_an_event_round_trips_to_its_row_without_secrets() -> None:
    event = AuditTrail.event(action="auth.login", actor="user:u", organization_id="org", target="x",
                             origin=AuditOrigin("198.51.100.4", "req-1"), before={"a": 1},
                             after={"a": 2, "password_hash": "h"}, details={"refresh_token": "r", "m": "pw"})
    entry = entry_of(type(event).FromString(event.SerializeToString()))
    assert (entry.actor, entry.action, entry.target) == ("user:u", "auth.login", "x")
    assert entry.organization_id == "org"
    assert entry.origin == AuditOrigin("198.51.100.4", "req-1") and entry.event_id == event.event_id
    assert entry.before == {"a": 1} and entry.after == {"a": 2} and entry.details == {"m": "pw"}
    assert entry.occurred_at is not None and entry.occurred_at.tzinfo is not None


def test_audited_check_records_a_refusal_and_raises_it() -> None:
    trail = Recorder()
    principal = auth_service_pb2.Principal(api_key_id="k1", organization_id="o1", permissions=["inference"])
    context = Context(("x-forwarded-for", "203.0.113.5"), ("x-request-id", "r-9"),
                      ("x-envoy-original-method", "POST"), ("x-envoy-original-path", "/v1/api-keys?x=1"))
    with pytest.raises(GatewayError) as caught:
        audited_check(trail, principal, context, "write:api-keys")
    assert caught.value.reason is Reason.PERMISSION_DENIED
    [entry] = trail.entries
    assert entry["action"] == "permission.denied" and entry["actor"] == "api_key:k1"
    assert entry["organization_id"] == "o1" and entry["target"] == "POST /v1/api-keys"
    assert entry["origin"] == AuditOrigin("203.0.113.5", "r-9")
    assert entry["details"] == {"permission": "write:api-keys"}
    audited_check(trail, principal, context, "inference")  # held: nothing recorded
    assert len(trail.entries) == 1


def test_query_validation() -> None:
    request = audit_log_service_pb2.ListAuditLogRequest
    query = query_of(request(actor="api_key:1", start_date="2026-01-01", end_date="2026-01-31",
                             after="42", limit=5), "org")
    assert (query.limit, query.after, query.start, query.end) == (5, 42, date(2026, 1, 1), date(2026, 1, 31))
    assert query_of(request(), "org").limit == 20
    for bad, param in ((request(limit=101), "limit"), (request(limit=-1), "limit"),
                       (request(after="abc"), "after"), (request(start_date="2026-1-1"), "start_date"),
                       (request(end_date="2026-02-30"), "end_date"),
                       (request(start_date="2026-02-02", end_date="2026-02-01"), "end_date"),
                       (request(action="x" * 300), "action")):
        with pytest.raises(GatewayError) as caught:
            query_of(bad, "org")
        assert caught.value.reason is Reason.INVALID_REQUEST and caught.value.param == param, param
