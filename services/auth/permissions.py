"""Permissions (RBAC): what each role may do, how a key narrows it, and the check every endpoint
runs (docs/reference.md §4 "Permissions"; docs/architecture.md §2.10).

* `ROLE_PERMISSIONS` is the one table from a role to its permissions. `admin:platform` is added
  only for admins of the platform organization: the `default` organization, which holds the
  bootstrap admin key (services/auth/admin.py).
* A key may narrow its role with `scopes` (permission names): its permissions are then the role's
  that its scopes name. Scopes never widen a role.
* A principal's permissions are computed once, when its cache entry is built (`grant`), and travel
  in `Principal.permissions`: the check is one membership test, never a database read.
* Every public RPC declares what it needs with `@requires(...)` right below `@rpc_method`
  (services/core/rpc.py makes the declaration visible to `check` while the RPC runs); health,
  reflection, `/healthz`, `/readyz` and `/metrics` are declared `PUBLIC`. A test walks every RPC of
  every public service and every HTTP binding and fails on one that declares nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from aggregator.auth.v1 import auth_service_pb2
from services.core.errors import GatewayError, Reason
from services.core.rpc import PERMISSION_ATTRIBUTE, declared_permission

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

INFERENCE = "inference"
READ_MODELS = "read:models"
READ_USAGE = "read:usage"
READ_API_KEYS = "read:api-keys"
WRITE_API_KEYS = "write:api-keys"
READ_USERS = "read:users"
WRITE_USERS = "write:users"
READ_BILLING = "read:billing"
WRITE_BILLING = "write:billing"
READ_AUDIT_LOG = "read:audit-log"
READ_OAUTH_CLIENTS = "read:oauth-clients"
WRITE_OAUTH_CLIENTS = "write:oauth-clients"
READ_RATE_LIMITS = "read:rate-limits"
WRITE_RATE_LIMITS = "write:rate-limits"
WRITE_CACHE = "write:cache"
ADMIN_PLATFORM = "admin:platform"

# Every permission, in the order the docs list them.
PERMISSIONS: tuple[str, ...] = (
    INFERENCE, READ_MODELS, READ_USAGE, READ_API_KEYS, WRITE_API_KEYS, READ_USERS, WRITE_USERS,
    READ_BILLING, WRITE_BILLING, READ_AUDIT_LOG, READ_OAUTH_CLIENTS, WRITE_OAUTH_CLIENTS, READ_RATE_LIMITS,
    WRITE_RATE_LIMITS, WRITE_CACHE, ADMIN_PLATFORM,
)
# Declared by endpoints that need no credential at all; not a permission anyone holds.
PUBLIC = "public"

# THE table: role -> permissions within its own organization.
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "admin": tuple(p for p in PERMISSIONS if p != ADMIN_PLATFORM),
    "member": (INFERENCE, READ_MODELS, READ_USAGE),
}
# Added to ROLE_PERMISSIONS["admin"] for admins of the platform organization only.
PLATFORM_ADMIN_PERMISSIONS: tuple[str, ...] = (ADMIN_PLATFORM,)

# gRPC services that are public and whose RPCs are all PUBLIC: they are gRPC's own, not ours.
PUBLIC_SERVICES: frozenset[str] = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


def permissions_for(role: str, scopes: Iterable[str] | None = None, *,
                    platform: bool = False) -> tuple[str, ...]:
    """The permissions of a key: its role's (plus `admin:platform` for an admin of the platform
    organization), narrowed to `scopes` when they are given. An unknown role has none."""
    granted = ROLE_PERMISSIONS.get(role, ())
    if platform and role == "admin":
        granted = granted + PLATFORM_ADMIN_PERMISSIONS
    if scopes is not None:
        wanted = frozenset(scopes)
        granted = tuple(p for p in granted if p in wanted)
    return granted


def scopes_of(principal: Any) -> tuple[str, ...] | None:
    """The scopes a principal carries (`Principal.scopes`, the key's stored scopes), or None when
    it has none: then the role applies whole. Empty means "no narrowing", as a repeated field
    cannot tell empty from absent (docs/reference.md §4 "Permissions")."""
    scopes = tuple(getattr(principal, "scopes", ()) or ())
    return scopes or None


def grant(principal: auth_service_pb2.Principal, *, platform: bool = False) -> auth_service_pb2.Principal:
    """Fills `principal.permissions` from its role and scopes; called once, before the principal
    is cached and shared (it is read-only after that)."""
    del principal.permissions[:]
    principal.permissions.extend(permissions_for(principal.role, scopes_of(principal), platform=platform))
    return principal


def requires(permission: str) -> Callable[[F], F]:
    """Declares the permission an RPC method needs (or PUBLIC). Goes right below `@rpc_method`,
    which reads the declaration when it wraps the method."""
    if permission not in PERMISSIONS and permission != PUBLIC:
        raise ValueError(f"unknown permission {permission!r}")

    def declare(fn: F) -> F:
        if hasattr(fn, "__wrapped__"):
            raise TypeError(f"@requires must sit below @rpc_method on {fn.__qualname__}")
        setattr(fn, PERMISSION_ATTRIBUTE, permission)
        return fn
    return declare


def denied(permission: str) -> GatewayError:
    """403 permission_denied naming the missing permission."""
    return GatewayError(Reason.PERMISSION_DENIED, f"This credential lacks the permission '{permission}'.")


def check(principal: auth_service_pb2.Principal, permission: str | None = None) -> None:
    """Raises PERMISSION_DENIED unless `principal` holds `permission` (by default the one the
    running RPC declared). An RPC that declared nothing is refused: fail closed."""
    needed = declared_permission.get() if permission is None else permission
    if needed == PUBLIC:
        return
    if needed is None:
        log.error("an authenticated RPC declares no permission; refusing it")
        raise GatewayError(Reason.INTERNAL, "The server had an error while processing your request.")
    if needed not in principal.permissions:
        raise denied(needed)


class PlatformOrganization:
    """The id of the platform organization, looked up on first need and then kept (an id never
    changes); looked up again while it does not exist yet. Only cache misses ask."""

    def __init__(self, lookup: Callable[[], Awaitable[str | None]]) -> None:
        self._lookup = lookup
        self._id: str | None = None

    async def is_platform(self, organization_id: str) -> bool:
        if self._id is None:
            self._id = await self._lookup()
        return self._id is not None and self._id == organization_id
