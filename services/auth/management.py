"""Key management for an organization's administrators: the logic behind ApiKeyService.

Every operation is scoped to the caller's organization: another organization's key id is
NOT_FOUND, exactly like an id that does not exist. Creation, update, rotation and revocation tell
every process's authentication cache through NATS (invalidation.py), after dropping the local
entry directly, so a change is effective everywhere within 2 s (docs/architecture.md §2.3).
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from aggregator.auth.v1 import auth_service_pb2
from services.auth import invalidation, repository
from services.auth.audit_repository import actor_of
from services.auth.cache import PrincipalCache
from services.auth.keys import generate_key, hash_key, key_prefix
from services.auth.records import KeyRow, KeySettings
from services.auth.target_org import target_organization
from services.auth.validation import PageCursor, key_id
from services.core.errors import GatewayError, Reason

log = logging.getLogger(__name__)
__all__ = ["ApiKeyManager", "actor_of", "issue_key", "not_found"]


def not_found(ident: str) -> GatewayError:
    return GatewayError(Reason.NOT_FOUND, f"No API key found with id '{ident[:64]}'.", param="id")


async def issue_key(pool: asyncpg.Pool, secret: bytes, organization_id: str, settings: KeySettings,
                    actor: str, user_id: str | None = None) -> tuple[KeyRow, str]:
    """Creates a key; answers its row and its plaintext (which is stored nowhere)."""
    plaintext = generate_key()
    row = await repository.insert_key(pool, organization_id=organization_id,
                                      key_hash=hash_key(secret, plaintext), prefix=key_prefix(plaintext),
                                      settings=settings, actor=actor, user_id=user_id)
    return row, plaintext


class ApiKeyManager:
    """Creates, lists, reads and revokes the keys of the caller's organization."""

    def __init__(self, pool: asyncpg.Pool, secret: bytes, cache: PrincipalCache | None = None,
                 nc: Any | None = None) -> None:
        self._pool = pool
        self._secret = secret
        self._cache = cache
        self._nc = nc

    async def announce(self, key_id_: str, key_hash: str) -> None:
        """Drops the entry of one HMAC everywhere; an empty `key_hash` drops every entry of the
        key (its current and rotated-out secrets alike)."""
        if self._cache is not None:
            self._cache.invalidate(key_hash, key_id_)
        await invalidation.publish(self._nc, key_id_, key_hash)

    async def create(self, caller: auth_service_pb2.Principal, settings: KeySettings,
                     organization_id: str = "") -> tuple[KeyRow, str]:
        """A new key of the caller's organization (or of `organization_id`, for a platform admin:
        target_org.py), with its plaintext."""
        target = await target_organization(self._pool, caller, organization_id)
        row, plaintext = await issue_key(self._pool, self._secret, target, settings, actor_of(caller))
        # A negative cache entry for this hash anywhere would refuse the new key for seconds.
        await self.announce(row.id, row.key_hash)
        return row, plaintext

    async def list(self, caller: auth_service_pb2.Principal, size: int,
                   after: PageCursor | None) -> tuple[list[KeyRow], PageCursor | None]:
        """One page of live keys, newest first, and the cursor of the next page (None on the last)."""
        rows = await repository.list_keys(self._pool, caller.organization_id, size + 1, after)
        if len(rows) <= size:
            return rows, None
        rows = rows[:size]
        return rows, PageCursor(rows[-1].created_at, rows[-1].id)

    async def get(self, caller: auth_service_pb2.Principal, ident: str) -> KeyRow:
        canonical = key_id(ident)
        row = None if canonical is None else await repository.get_key(self._pool, caller.organization_id,
                                                                        canonical)
        if row is None:
            raise not_found(ident)
        return row

    async def update(self, caller: auth_service_pb2.Principal, ident: str, changes: dict[str, Any]) -> KeyRow:
        """Applies validated changes (validation.changes_from_update) to a live key; every process
        uses the new settings within 2 s while NATS is up."""
        canonical = key_id(ident)
        row = None if canonical is None else await repository.update_key(
            self._pool, caller.organization_id, canonical, changes, actor_of(caller))
        if row is None:
            raise not_found(ident)
        if changes:
            await self.announce(row.id, "")
        return row

    async def rotate(self, caller: auth_service_pb2.Principal, ident: str,
                     grace_s: int) -> tuple[KeyRow, str]:
        """A new secret for a live key, answered with the updated row; the replaced one works for
        `grace_s` more seconds (docs/reference.md §4)."""
        canonical = key_id(ident)
        plaintext = generate_key()
        row = None if canonical is None else await repository.rotate_key(
            self._pool, caller.organization_id, canonical, key_hash=hash_key(self._secret, plaintext),
            prefix=key_prefix(plaintext), grace_s=grace_s, actor=actor_of(caller))
        if row is None:
            raise not_found(ident)
        # The replaced secret's cached entry carries no grace expiry yet, and an earlier
        # rotated-out secret must stop now: drop them all; then any negative entry of the new one.
        await self.announce(row.id, "")
        await self.announce(row.id, row.key_hash)
        return row, plaintext

    async def revoke(self, caller: auth_service_pb2.Principal, ident: str) -> str:
        """Revokes a key (idempotently) and answers its canonical id; every process refuses it,
        and a rotated-out secret still in its grace period, within 2 s while NATS is up (within
        the cache TTL otherwise)."""
        return await self.revoke_as(caller.organization_id, ident, actor_of(caller))

    async def revoke_as(self, organization_id: str, ident: str, actor: str) -> str:
        """`revoke` for a key of `organization_id`, on behalf of `actor` (an OAuth client revoking
        a key it obtained)."""
        canonical = key_id(ident)
        key_hash = None if canonical is None else await repository.revoke_key(
            self._pool, organization_id, canonical, actor)
        if canonical is None or key_hash is None:
            raise not_found(ident)
        await self.announce(canonical, "")
        return canonical
