"""Permissions (docs/reference.md §4 "Permissions"): the role table, narrowing by scopes, the check,
the declaration machinery, and the computation once per cache entry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from aggregator.auth.v1 import auth_service_pb2
from services.auth import assembly, permissions, repository
from services.auth.authenticator import Authenticator
from services.auth.cache import PrincipalCache
from services.auth.keys import hash_key
from services.auth.permissions import (
    ADMIN_PLATFORM,
    INFERENCE,
    PERMISSIONS,
    PUBLIC,
    READ_MODELS,
    READ_USAGE,
    WRITE_API_KEYS,
    PlatformOrganization,
    check,
    grant,
    permissions_for,
    requires,
    scopes_of,
)
from services.auth.records import KeyRow, KeySettings
from services.core.errors import GatewayError, Reason
from services.core.inproc import InProcessServicerContext
from services.core.rpc import declared_permission, rpc_method

SECRET = b"s" * 32
PLATFORM_ORG, OTHER_ORG = "org-platform", "org-other"


# --- the role table and scopes -------------------------------------------------------------------

def test_admin_holds_everything_of_its_organization_but_not_the_platform() -> None:
    assert permissions_for("admin") == tuple(p for p in PERMISSIONS if p != ADMIN_PLATFORM)


def test_only_admins_of_the_platform_organization_hold_admin_platform() -> None:
    assert permissions_for("admin", platform=True) == PERMISSIONS
    assert ADMIN_PLATFORM not in permissions_for("member", platform=True)


def test_member_uses_models_and_reads_usage_only() -> None:
    assert permissions_for("member") == (INFERENCE, READ_MODELS, READ_USAGE)


def test_an_unknown_role_holds_nothing() -> None:
    assert permissions_for("owner") == ()
    assert permissions_for("") == ()


@pytest.mark.parametrize(("role", "scopes", "expected"), [
    ("admin", [INFERENCE, READ_MODELS], (INFERENCE, READ_MODELS)),
    ("admin", [READ_MODELS, INFERENCE, "no-such-permission"], (INFERENCE, READ_MODELS)),  # table order
    ("member", [WRITE_API_KEYS, INFERENCE], (INFERENCE,)),  # scopes never widen a role
    ("member", [WRITE_API_KEYS], ()),
    ("admin", [], ()),  # an explicit empty list narrows to nothing; the stored "no scopes" is None
])
def test_scopes_narrow_the_role(role: str, scopes: list[str], expected: tuple[str, ...]) -> None:
    assert permissions_for(role, scopes) == expected


def test_admin_platform_is_kept_only_when_scoped_in() -> None:
    assert permissions_for("admin", [ADMIN_PLATFORM], platform=True) == (ADMIN_PLATFORM,)
    assert permissions_for("admin", [INFERENCE], platform=True) == (INFERENCE,)


def test_scopes_of_reads_the_principal_scopes_when_present() -> None:
    assert scopes_of(SimpleNamespace(scopes=[INFERENCE])) == (INFERENCE,)
    assert scopes_of(SimpleNamespace(scopes=[])) is None  # empty: the role applies whole
    assert scopes_of(SimpleNamespace()) is None  # a principal without the field
    assert scopes_of(auth_service_pb2.Principal(role="admin")) is None


def test_grant_narrows_by_the_principal_scopes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook: once Principal carries `scopes`, grant() uses them."""
    monkeypatch.setattr(permissions, "scopes_of", lambda _principal: (INFERENCE, WRITE_API_KEYS))
    principal = grant(auth_service_pb2.Principal(role="member"))
    assert list(principal.permissions) == [INFERENCE]


def test_grant_narrows_an_admin_by_its_stored_scopes() -> None:
    principal = grant(auth_service_pb2.Principal(role="admin", scopes=[INFERENCE, READ_MODELS]))
    assert list(principal.permissions) == [INFERENCE, READ_MODELS]
    assert list(grant(auth_service_pb2.Principal(role="admin", scopes=[])).permissions) == list(
        permissions_for("admin"))


def test_grant_replaces_what_was_there() -> None:
    principal = auth_service_pb2.Principal(role="member", permissions=[WRITE_API_KEYS])
    assert list(grant(principal).permissions) == [INFERENCE, READ_MODELS, READ_USAGE]


# --- the check -----------------------------------------------------------------------------------

def holder(*granted: str) -> auth_service_pb2.Principal:
    return auth_service_pb2.Principal(role="member", permissions=list(granted))


def test_a_held_permission_passes() -> None:
    check(holder(INFERENCE), INFERENCE)


def test_a_missing_permission_is_403_permission_denied_naming_it() -> None:
    with pytest.raises(GatewayError) as info:
        check(holder(INFERENCE, READ_MODELS), WRITE_API_KEYS)
    error = info.value
    assert error.reason is Reason.PERMISSION_DENIED and error.http_status == 403
    assert error.message == "This credential lacks the permission 'write:api-keys'."
    body = error.to_openai()["error"]
    assert body["code"] == "permission_denied" and body["type"] == "permission_error"


def test_public_needs_nothing() -> None:
    check(holder(), PUBLIC)


def test_an_rpc_that_declares_nothing_is_refused() -> None:
    with pytest.raises(GatewayError) as info:
        check(holder(*PERMISSIONS))
    assert info.value.reason is Reason.INTERNAL


# --- declarations --------------------------------------------------------------------------------

def test_requires_refuses_unknown_permissions() -> None:
    with pytest.raises(ValueError, match="unknown permission"):
        requires("write:everything")


def test_requires_must_sit_below_rpc_method() -> None:
    async def method(self: Any, request: Any, context: Any) -> None:
        return None

    with pytest.raises(TypeError, match="below @rpc_method"):
        requires(INFERENCE)(rpc_method(method))


class Servicer:
    """Records the declared permission the check would see while each kind of method runs."""

    seen: list[str | None]

    def __init__(self) -> None:
        self.seen = []

    @rpc_method
    @requires(WRITE_API_KEYS)
    async def Unary(self, request: Any, context: Any) -> str:
        self.seen.append(declared_permission.get())
        check(request)
        return "ok"

    @rpc_method
    @requires(INFERENCE)
    async def Streaming(self, request: Any, context: Any) -> AsyncIterator[str]:
        self.seen.append(declared_permission.get())
        check(request)
        yield "one"
        self.seen.append(declared_permission.get())
        yield "two"

    @rpc_method
    async def Internal(self, request: Any, context: Any) -> str | None:
        return declared_permission.get()


async def test_rpc_method_exposes_the_declaration_while_the_method_runs() -> None:
    servicer = Servicer()
    assert await servicer.Unary(holder(WRITE_API_KEYS), None) == "ok"
    assert [item async for item in servicer.Streaming(holder(INFERENCE), None)] == ["one", "two"]
    assert servicer.seen == [WRITE_API_KEYS, INFERENCE, INFERENCE]
    assert declared_permission.get() is None  # and forgets it afterwards


async def test_undeclared_methods_leave_the_caller_declaration_alone() -> None:
    token = declared_permission.set(INFERENCE)  # an in-process call from an inference RPC
    try:
        assert await Servicer().Internal(None, None) == INFERENCE
    finally:
        declared_permission.reset(token)


async def test_the_declared_permission_is_enforced_in_the_method() -> None:
    context = InProcessServicerContext(None)  # errors come back as they were raised
    with pytest.raises(GatewayError) as info:
        await Servicer().Unary(holder(INFERENCE, READ_MODELS), context)
    assert info.value.reason is Reason.PERMISSION_DENIED and "'write:api-keys'" in info.value.message
    with pytest.raises(GatewayError) as info:
        [item async for item in Servicer().Streaming(holder(READ_MODELS), context)]
    assert "'inference'" in info.value.message


# --- computed once, when the cache entry is built ------------------------------------------------

def key_row(role: str, organization_id: str) -> KeyRow:
    return KeyRow(id=f"key-{role}-{organization_id}", organization_id=organization_id, key_hash="h",
                  prefix="sk_live_abcd", settings=KeySettings(role=role),
                  created_at=datetime(2026, 1, 1, tzinfo=UTC))


class Lookups:
    """A fake platform-organization lookup that counts its calls."""

    def __init__(self, answer: str | None) -> None:
        self.answer, self.calls = answer, 0

    async def __call__(self) -> str | None:
        self.calls += 1
        return self.answer


@pytest.mark.parametrize(("role", "organization_id", "platform_admin"), [
    ("admin", PLATFORM_ORG, True), ("admin", OTHER_ORG, False), ("member", PLATFORM_ORG, False),
])
async def test_the_loader_grants_permissions_and_admin_platform(
    monkeypatch: pytest.MonkeyPatch, role: str, organization_id: str, platform_admin: bool
) -> None:
    async def find_live_key(pool: Any, key_hash: str) -> KeyRow:
        return key_row(role, organization_id)

    monkeypatch.setattr(repository, "find_live_key", find_live_key)
    platform = PlatformOrganization(Lookups(PLATFORM_ORG))
    record = await assembly.load_auth_record(None, "h", platform=platform)  # type: ignore[arg-type]
    assert record is not None
    assert tuple(record.principal.permissions) == permissions_for(role, platform=platform_admin)


async def test_the_platform_organization_is_looked_up_once_found() -> None:
    missing = Lookups(None)
    platform = PlatformOrganization(missing)
    assert not await platform.is_platform(PLATFORM_ORG)
    assert not await platform.is_platform(PLATFORM_ORG)
    assert missing.calls == 2  # not there yet: asked again on the next miss
    found = Lookups(PLATFORM_ORG)
    platform = PlatformOrganization(found)
    assert await platform.is_platform(PLATFORM_ORG) and not await platform.is_platform(OTHER_ORG)
    assert found.calls == 1


async def test_authentication_reads_permissions_from_the_cache_without_recomputing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[str] = []

    async def find_live_key(pool: Any, key_hash: str) -> KeyRow:
        loads.append(key_hash)
        return key_row("member", OTHER_ORG)

    granted: list[str] = []
    real_grant = permissions.grant

    def counting_grant(principal: auth_service_pb2.Principal, **kwargs: Any) -> auth_service_pb2.Principal:
        granted.append(principal.api_key_id)
        return real_grant(principal, **kwargs)

    monkeypatch.setattr(repository, "find_live_key", find_live_key)
    monkeypatch.setattr(assembly, "grant", counting_grant)
    platform = PlatformOrganization(Lookups(PLATFORM_ORG))

    async def load(key_hash: str) -> Any:
        return await assembly.load_auth_record(None, key_hash, platform=platform)  # type: ignore[arg-type]

    authenticator = Authenticator(SECRET, PrincipalCache(load))
    for _ in range(5):
        principal = await authenticator.authenticate("Bearer sk_live_member")
        assert list(principal.permissions) == [INFERENCE, READ_MODELS, READ_USAGE]
    assert loads == [hash_key(SECRET, "sk_live_member")] and len(granted) == 1
