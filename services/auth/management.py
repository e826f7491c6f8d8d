"""Key management for an organization's administrators: the logic behind ApiKeyService.

Every operation is scoped to the caller's organization: another organization's key id is
NOT_FOUND, exactly like an id that does not exist. Creation and revocation tell every process's
authentication cache through NATS (invalidation.py), after dropping the local entry directly.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from aggregator.auth.v1 import auth_service_pb2
from services.auth import invalidation, repository
from services.auth.cache import PrincipalCache
from services.auth.keys import generate_key, hash_key, key_prefix
from services.auth.records import KeyRow, KeySettings
from services.auth.validation import PageCursor, key_id
from services.core.errors import GatewayError, Reason

log = logging.getLogger(__name__)


def require_admin(principal: auth_service_pb2.Principal) -> None:
    """Only admin keys manage keys (docs/architecture.md §2.10: admin and inference are separate scopes)."""
    if principal.role != "admin":
        raise GatewayError(Reason.PERMISSION_DENIED,
                           "You have insufficient permissions for this operation: managing API keys "
                           "requires a key with the admin role.")


def actor_of(principal: auth_service_pb2.Principal) -> str:
    """How the audit log names a caller."""
    return f"api_key:{principal.api_key_id}"


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

    async def _announce(self, key_id_: str, key_hash: str) -> None:
        if self._cache is not None:
            self._cache.invalidate(key_hash, key_id_)
        await invalidation.publish(self._nc, key_id_, key_hash)

    async def create(self, caller: auth_service_pb2.Principal, settings: KeySettings) -> tuple[KeyRow, str]:
        """A new key of the caller's organization, with its plaintext."""
        row, plaintext = await issue_key(self._pool, self._secret, caller.organization_id, settings,
                                         actor_of(caller))
        # A negative cache entry for this hash anywhere would refuse the new key for seconds.
        await self._announce(row.id, row.key_hash)
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

    async def revoke(self, caller: auth_service_pb2.Principal, ident: str) -> str:
        """Revokes a key (idempotently) and answers its canonical id; every process refuses it
        within 2 s while NATS is up (within the cache TTL otherwise)."""
        canonical = key_id(ident)
        key_hash = None if canonical is None else await repository.revoke_key(
            self._pool, caller.organization_id, canonical, actor_of(caller))
        if canonical is None or key_hash is None:
            raise not_found(ident)
        await self._announce(canonical, key_hash)
        return canonical
