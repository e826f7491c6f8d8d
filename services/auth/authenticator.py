"""Turns an `Authorization` header into the Principal behind the key, from the in-process cache.

The hot path is: parse the header, one HMAC, one dict lookup, one expiry check. PostgreSQL is read
only on a cache miss (shared by concurrent misses), and `last_used_at` is written in the
background (last_used.py). Error messages never contain the key.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aggregator.auth.v1 import auth_service_pb2
from services.auth.cache import PrincipalCache
from services.auth.jwt_keys import looks_like_jwt
from services.auth.keys import MAX_KEY_LENGTH, hash_key, parse_bearer
from services.auth.last_used import LastUsedRecorder
from services.core.errors import GatewayError, Reason

MISSING_KEY_MESSAGE = ("You didn't provide an API key. You need to provide your API key in an Authorization "
                       "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
INVALID_KEY_MESSAGE = "Incorrect API key provided."
# Verifies a people's access token (services/auth/login.py): its principal, or None.
TokenVerifier = Callable[[str], Awaitable[auth_service_pb2.Principal | None]]


def missing_key() -> GatewayError:
    return GatewayError(Reason.MISSING_API_KEY, MISSING_KEY_MESSAGE)


def invalid_key() -> GatewayError:
    return GatewayError(Reason.INVALID_API_KEY, INVALID_KEY_MESSAGE)


class Authenticator:
    """Resolves API keys into principals for one process.

    The returned Principal is shared with the cache and other requests: read it, never modify it.
    """

    def __init__(self, secret: bytes, cache: PrincipalCache, *, recorder: LastUsedRecorder | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._tokens: TokenVerifier | None = None
        self._cache = cache
        self._recorder = recorder
        self._wall_clock = wall_clock

    @property
    def cache(self) -> PrincipalCache:
        return self._cache

    def accept_access_tokens(self, verifier: TokenVerifier) -> None:
        """Lets a JWT access token stand wherever a key does (docs/reference.md §4 "People")."""
        self._tokens = verifier

    def key_hash(self, key: str) -> str:
        """The stored HMAC of `key` under this process's server secret."""
        return hash_key(self._secret, key)

    async def authenticate(self, authorization: str | None) -> auth_service_pb2.Principal:
        """The principal of an `Authorization: Bearer <key>` value.

        Raises GatewayError MISSING_API_KEY when there is no Bearer credential, INVALID_API_KEY when
        the key is unknown, revoked or expired, UNAVAILABLE when the key is not cached and the
        database cannot be reached.
        """
        key = parse_bearer(authorization)
        if key is None:
            raise missing_key()
        return await self.authenticate_key(key)

    async def authenticate_key(self, key: str) -> auth_service_pb2.Principal:
        """The principal of a plaintext key (without "Bearer "), or of a people's access token:
        verified locally (signature, expiry, revoked session), no database on a warm cache."""
        if self._tokens is not None and looks_like_jwt(key):
            principal = await self._tokens(key)
            if principal is None:
                raise invalid_key()
            return principal
        if not key or len(key) > MAX_KEY_LENGTH:
            raise invalid_key()
        record = await self._cache.get(hash_key(self._secret, key))
        # Expiry is checked on every use, so a cached key stops at its expires_at exactly.
        if record is None or record.expired(self._wall_clock()):
            raise invalid_key()
        if self._recorder is not None:
            self._recorder.touch(record.principal.api_key_id)
        return record.principal
