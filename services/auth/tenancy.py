"""Organizations and users: the logic behind OrganizationService and UserService
(docs/reference.md §4 "Organizations and users").

* Platform admins (`admin:platform`: admins of the default organization) create and list every
  organization, read and rename any, and may name another organization with `organization_id`
  when creating a user (or an API key, management.py) or listing users.
* Everyone else acts in the caller's own organization only: another organization's id answers
  NOT_FOUND (404), exactly like an id that does not exist, so ids cannot be probed.
* Emails are trimmed and lower-cased, and unique on the whole gateway; passwords are hashed with
  argon2id (passwords.py, in a worker thread: the hash is deliberately slow) and never answered.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from aggregator.auth.v1.auth_service_pb2 import Principal
from services.auth import tenancy_repository as store
from services.auth.management import actor_of
from services.auth.org_settings import announce_change
from services.auth.passwords import hash_password
from services.auth.records import ROLES
from services.auth.sessions import live_sessions, publish_revocation, revoke_user_sessions
from services.auth.target_org import is_platform_admin, organization_not_found, target_organization
from services.auth.tenancy_repository import OrganizationRow, Page, UserRow
from services.auth.validation import key_id, validate_provider_policy
from services.core.errors import GatewayError, Reason, quote

MAX_NAME_LENGTH = 200
MAX_EMAIL_LENGTH = 320
MIN_PASSWORD_LENGTH = 8
# argon2 hashes any length, but a megabyte password is only a way to burn CPU.
MAX_PASSWORD_LENGTH = 1024
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def user_not_found(ident: str) -> GatewayError:
    return GatewayError(Reason.NOT_FOUND, f"No user found with id {quote(ident)}.", param="id")


# -- validation (pure) -----------------------------------------------------------------------

def organization_name(value: str) -> str:
    name = value.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise _invalid(f"An organization name has 1 to {MAX_NAME_LENGTH} characters.", "name")
    return name


def user_name(value: str) -> str:
    name = value.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(f"name must be at most {MAX_NAME_LENGTH} characters.", "name")
    return name


def email_address(value: str) -> str:
    """The email trimmed and lower-cased: one `@` with text on both sides, no spaces."""
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in email) \
            or len(email) > MAX_EMAIL_LENGTH:
        raise _invalid("email must be an email address (name@example.com).", "email")
    return email


def user_role(value: str) -> str:
    """'admin' or 'member'; empty means 'member'."""
    if not value:
        return "member"
    if value not in ROLES:
        raise _invalid(f"Invalid role {quote(value)}: expected 'admin' or 'member'.", "role")
    return value


def password(value: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(value) <= MAX_PASSWORD_LENGTH:
        raise _invalid(f"password must have {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters.",
                       "password")
    return value


def page_limit(value: int) -> int:
    if not 0 <= value <= MAX_LIMIT:
        raise _invalid(f"limit must be between 1 and {MAX_LIMIT}.", "limit")
    return value or DEFAULT_LIMIT


def page_after(value: str) -> str | None:
    """The canonical id of `after`, None when empty."""
    if not value:
        return None
    canonical = key_id(value)
    if canonical is None:
        raise _invalid("after must be the id of an item of this list.", "after")
    return canonical


async def hashed(secret: str) -> str:
    """An argon2id hash, computed off the event loop."""
    return await asyncio.to_thread(hash_password, secret)


class TenancyManager:
    """Organizations and users, each operation scoped as the module docstring says."""

    def __init__(self, pool: asyncpg.Pool, nc: Any = None) -> None:
        self._pool = pool
        self._nc = nc  # tells every process at once that a deleted user's sessions are over

    # -- organizations ---------------------------------------------------------------------

    async def create_organization(self, caller: Principal, name: str) -> OrganizationRow:
        return await store.create_organization(self._pool, organization_name(name), actor_of(caller))

    async def list_organizations(self, caller: Principal, limit: int, after: str) -> Page:
        return await store.list_organizations(self._pool, page_limit(limit), page_after(after))

    def _visible(self, caller: Principal, ident: str) -> str:
        """The canonical id of an organization the caller may see; NOT_FOUND otherwise."""
        canonical = key_id(ident)
        if canonical is None or (canonical != caller.organization_id and not is_platform_admin(caller)):
            raise organization_not_found(ident)
        return canonical

    async def get_organization(self, caller: Principal, ident: str) -> OrganizationRow:
        row = await store.get_organization(self._pool, self._visible(caller, ident))
        if row is None:
            raise organization_not_found(ident)
        return row

    async def update_organization(self, caller: Principal, ident: str, name: str | None,
                                  store_prompts: bool | None = None,
                                  provider: dict[str, Any] | None = None) -> OrganizationRow:
        """Renames the organization, opts it in or out of keeping bodies in the request log, and
        sets its default provider preferences (checked as a request's are; `{}` removes them);
        every process learns of the last two within 2 s (services/auth/org_settings.py)."""
        canonical = self._visible(caller, ident)
        if provider is not None:
            provider = validate_provider_policy(provider) or {}
        if name is None and store_prompts is None and provider is None:
            row = await store.get_organization(self._pool, canonical)
        else:
            row = await store.update_organization(
                self._pool, canonical, None if name is None else organization_name(name), store_prompts,
                actor_of(caller), provider)
            if store_prompts is not None or provider is not None:
                await announce_change(self._nc)
        if row is None:
            raise organization_not_found(ident)
        return row

    # -- users -----------------------------------------------------------------------------

    async def create_user(self, caller: Principal, *, email: str, name: str, role: str, secret: str,
                          organization_id: str = "") -> UserRow:
        checked = dict(email=email_address(email), name=user_name(name), role=user_role(role))
        if not secret:
            raise _invalid("password is required.", "password")
        target = await target_organization(self._pool, caller, organization_id)
        return await store.create_user(self._pool, target, password_hash=await hashed(password(secret)),
                                       actor=actor_of(caller), **checked)

    async def list_users(self, caller: Principal, limit: int, after: str, organization_id: str = "") -> Page:
        size, cursor = page_limit(limit), page_after(after)
        target = await target_organization(self._pool, caller, organization_id)
        return await store.list_users(self._pool, target, size, cursor)

    async def get_user(self, caller: Principal, ident: str) -> UserRow:
        canonical = key_id(ident)
        org = caller.organization_id
        row = None if canonical is None else await store.get_user(self._pool, org, canonical)
        if row is None:
            raise user_not_found(ident)
        return row

    async def update_user(self, caller: Principal, ident: str, fields: dict[str, str]) -> UserRow:
        """Applies the fields present (email, name, role, password); the others stay."""
        changes: dict[str, Any] = {}
        if "email" in fields:
            changes["email"] = email_address(fields["email"])
        if "name" in fields:
            changes["name"] = user_name(fields["name"])
        if "role" in fields:
            if fields["role"] not in ROLES:
                raise _invalid(f"Invalid role {quote(fields['role'])}: expected 'admin' or 'member'.", "role")
            changes["role"] = fields["role"]
        canonical = key_id(ident)
        if canonical is None:
            raise user_not_found(ident)
        if "password" in fields:
            changes["password_hash"] = await hashed(password(fields["password"]))
        before = await store.get_user(self._pool, caller.organization_id, canonical)
        row = await store.update_user(self._pool, caller.organization_id, canonical, changes,
                                      actor_of(caller))
        if row is None or before is None:
            raise user_not_found(ident)
        if "password_hash" in changes or row.role != before.role:
            # The user's access tokens carry the old role: the user signs in again.
            reason = "password_changed" if "password_hash" in changes else "role_changed"
            await self._end_sessions(canonical, reason)
        return row

    async def _end_sessions(self, user_id: str, reason: str) -> None:
        for session_id in await revoke_user_sessions(self._pool, user_id, reason):
            await publish_revocation(self._nc, session_id)

    async def delete_user(self, caller: Principal, ident: str) -> str:
        """Deletes the user (its sessions go with it, by cascade) and ends its access tokens on every
        worker now rather than when each worker's cached session state expires."""
        canonical = key_id(ident)
        sessions = [] if canonical is None else await live_sessions(self._pool, canonical)
        if canonical is None or not await store.delete_user(self._pool, caller.organization_id, canonical,
                                                             actor_of(caller)):
            raise user_not_found(ident)
        for session_id in sessions:
            await publish_revocation(self._nc, session_id)
        return canonical
