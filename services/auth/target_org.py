"""Which organization a request acts in (docs/reference.md §4 "Organizations and users").

The caller's own, unless the request names another with `organization_id`: only platform admins
(`admin:platform`) may, and an organization that does not exist is NOT_FOUND. Used by user
creation and listing (tenancy.py) and by API key creation (management.py).
"""

from __future__ import annotations

import asyncpg

from aggregator.auth.v1 import auth_service_pb2
from services.auth import tenancy_repository as store
from services.auth.permissions import ADMIN_PLATFORM, denied
from services.auth.validation import key_id
from services.core.errors import GatewayError, Reason, quote


def is_platform_admin(caller: auth_service_pb2.Principal) -> bool:
    return ADMIN_PLATFORM in caller.permissions


def organization_not_found(ident: str, param: str = "id") -> GatewayError:
    return GatewayError(Reason.NOT_FOUND, f"No organization found with id {quote(ident)}.", param=param)


async def target_organization(pool: asyncpg.Pool, caller: auth_service_pb2.Principal, requested: str) -> str:
    """The organization a request acts in: the caller's, or `requested` (`organization_id`),
    which needs `admin:platform` unless it is the caller's own; NOT_FOUND when it does not exist."""
    if not requested or requested == caller.organization_id:
        return caller.organization_id
    if not is_platform_admin(caller):
        raise denied(ADMIN_PLATFORM)
    canonical = key_id(requested)
    if canonical is None or await store.get_organization(pool, canonical) is None:
        raise organization_not_found(requested, "organization_id")
    return canonical
