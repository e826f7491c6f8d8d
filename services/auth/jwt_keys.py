"""The keys that sign people's access tokens, and the tokens themselves (docs/reference.md §4
"People"; docs/architecture.md §2.10).

* Algorithm EdDSA (Ed25519). A key's private half is never stored: it is derived from the server
  secret and the key's id (`kid`) by HMAC-SHA256, so every process of a deployment derives the same
  key and the table `signing_keys` holds only public halves and dates.
* Rotation: the newest key signs for `ROTATION_PERIOD` (7 days); then the next process that signs
  creates a new kid. A key keeps verifying until `verify_until`: the end of its signing period
  plus the access tokens' lifetime (and the signer re-check interval), so every token it signed
  verifies until the token itself expires. `GET /.well-known/jwks.json` lists those keys.
* Verification is local: the public keys are cached per process, and PostgreSQL is read only for a
  kid the process has not seen (at most once a second), so a warm cache touches no database.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALGORITHM = "EdDSA"
ROTATION_PERIOD = timedelta(days=7)
ACCESS_TOKEN_TTL_S = 900  # 15 minutes
# How long a process keeps signing with the key it found before asking PostgreSQL again; a key
# rotated early (rotate()) verifies this much longer, for tokens other processes signed meanwhile.
SIGNER_RECHECK_S = 60.0
UNKNOWN_KID_RELOAD_S = 1.0
MAX_TOKEN_LENGTH = 4096
_DERIVATION_LABEL = b"aggregator jwt signing key v1\x00"
_LOCK_ID = 0x6A77746B  # pg_advisory_xact_lock id: one key creation at a time


def private_key(secret: bytes, kid: str) -> Ed25519PrivateKey:
    """The signing key of `kid`: its Ed25519 seed is HMAC-SHA256(server secret, label || kid)."""
    seed = hmac.digest(secret, _DERIVATION_LABEL + kid.encode(), "sha256")
    return Ed25519PrivateKey.from_private_bytes(seed)


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def looks_like_jwt(credential: str) -> bool:
    """Whether a bearer credential is a compact JWS (three dot-separated parts, a JSON header)
    rather than an API key (`sk_live_...`)."""
    return credential.startswith("eyJ") and credential.count(".") == 2


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A row of `signing_keys`, times as POSIX seconds."""

    kid: str
    key: Ed25519PublicKey
    sign_until: float
    verify_until: float

    @classmethod
    def from_row(cls, row: Any) -> PublicKey:
        return cls(kid=row["kid"], key=Ed25519PublicKey.from_public_bytes(bytes(row["public_key"])),
                   sign_until=row["sign_until"].timestamp(), verify_until=row["verify_until"].timestamp())

    def jwk(self) -> dict[str, str]:
        """The RFC 7517 / RFC 8037 form."""
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw_public(self.key)), "kid": self.kid,
                "alg": ALGORITHM, "use": "sig"}


_COLUMNS = "kid, public_key, sign_until, verify_until"


class KeyRing:
    """One process's view of the signing keys: signs new tokens, finds verification keys."""

    def __init__(self, pool: asyncpg.Pool, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._secret = secret
        self._clock = clock
        self._keys: dict[str, PublicKey] = {}
        self._signer: tuple[PublicKey, Ed25519PrivateKey, float] | None = None  # key, private, re-check at
        self._last_reload = float("-inf")
        self._pending: asyncio.Future[list[PublicKey]] | None = None

    async def _current(self, *, rotate: bool = False) -> PublicKey:
        """The key that signs now, created when none does (or, with `rotate`, always)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            if rotate:
                # The old key stops signing now; its tokens (and those other processes sign until
                # they re-check) still verify until they expire.
                await conn.execute(
                    "UPDATE signing_keys SET sign_until = now(), verify_until = LEAST(verify_until, "
                    "now() + $1::float8 * interval '1 second') WHERE sign_until > now()",
                    ACCESS_TOKEN_TTL_S + SIGNER_RECHECK_S)
            else:
                rows = await conn.fetch(f"SELECT {_COLUMNS} FROM signing_keys WHERE sign_until > now() "
                                        "ORDER BY created_at DESC")
                # A key another server secret derived (the secret was changed) cannot sign here.
                for row in rows:
                    derived = raw_public(private_key(self._secret, row["kid"]).public_key())
                    if bytes(row["public_key"]) == derived:
                        return PublicKey.from_row(row)
            kid = secrets.token_urlsafe(12)
            row = await conn.fetchrow(
                "INSERT INTO signing_keys (kid, algorithm, public_key, sign_until, verify_until) "
                "VALUES ($1, $2, $3, now() + $4::interval, "
                "now() + $4::interval + $5::float8 * interval '1 second') "
                f"RETURNING {_COLUMNS}",
                kid, ALGORITHM, raw_public(private_key(self._secret, kid).public_key()), ROTATION_PERIOD,
                ACCESS_TOKEN_TTL_S + SIGNER_RECHECK_S)
            return PublicKey.from_row(row)

    async def signer(self) -> tuple[str, Ed25519PrivateKey]:
        """The kid and private key new tokens are signed with."""
        now = self._clock()
        if self._signer is None or now >= self._signer[2] or now >= self._signer[0].sign_until:
            key = await self._current()
            self._keys[key.kid] = key
            recheck = min(now + SIGNER_RECHECK_S, key.sign_until)
            self._signer = (key, private_key(self._secret, key.kid), recheck)
        return self._signer[0].kid, self._signer[1]

    async def rotate(self) -> str:
        """Starts a new key at once (the scheduled rotation needs no call); answers its kid."""
        key = await self._current(rotate=True)
        self._keys[key.kid] = key
        self._signer = (key, private_key(self._secret, key.kid), self._clock() + SIGNER_RECHECK_S)
        return key.kid

    async def reload(self) -> list[PublicKey]:
        """Every key that still verifies, read from PostgreSQL; the cache keeps them."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM signing_keys WHERE verify_until > now() "
                                    "ORDER BY created_at DESC")
        keys = [PublicKey.from_row(r) for r in rows]
        self._keys = {k.kid: k for k in keys}
        self._last_reload = self._clock()
        return keys

    async def published(self, max_age_s: float = 60.0) -> list[PublicKey]:
        """The keys `GET /.well-known/jwks.json` lists: those that still verify, re-read from
        PostgreSQL when the last read is older than `max_age_s`."""
        if self._clock() - self._last_reload >= max_age_s:
            return await self.reload()
        now = self._clock()
        return sorted((k for k in self._keys.values() if k.verify_until > now), key=lambda k: -k.sign_until)

    async def _throttled_reload(self) -> list[PublicKey]:
        wait = self._last_reload + UNKNOWN_KID_RELOAD_S - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)
        return await self.reload()

    async def public_key(self, kid: str) -> PublicKey | None:
        """The verification key `kid`, from the cache. An unknown kid (a key another process just
        created) waits for the next reload: one query at most every second, shared by every waiter,
        however many tokens name unknown kids."""
        key = self._keys.get(kid)
        if key is None:
            if self._pending is None or self._pending.done():
                self._pending = asyncio.ensure_future(self._throttled_reload())
            await asyncio.shield(self._pending)
            key = self._keys.get(kid)
        if key is None or self._clock() >= key.verify_until:
            return None
        return key

    async def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of `claims` with the current key (`kid` in the header)."""
        kid, key = await self.signer()
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "JWT"})

    async def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this deployment signed, still valid; None otherwise (never an
        exception: the caller answers one message for every failure)."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if not isinstance(kid, str):
                return None
            key = await self.public_key(kid)
            if key is None:
                return None
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub", "sid", "jti", "org", "role"]})
        except jwt.PyJWTError:
            return None
        return claims
