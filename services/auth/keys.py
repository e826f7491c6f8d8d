"""API key format and hashing (docs/architecture.md §2.10): pure functions, no I/O.

A key is `sk_live_` followed by 43 url-safe characters (32 random bytes). The database stores only
`hash_key(server_secret, key)`, a hex HMAC-SHA256: one keyed hash per request is microseconds,
whereas a slow password hash (bcrypt, argon2) on every request would be a denial-of-service lever.
A key has 256 bits of entropy, so a fast keyed hash loses nothing against offline guessing, and
without the server secret a leaked table is useless.

Lookups go by HMAC (a dict key or a unique index): timing differences there reveal, at most,
something about an HMAC an attacker cannot compute without the secret. Where a known key is
checked against a stored HMAC, `verify_key` compares in constant time.
"""

from __future__ import annotations

import hmac
import secrets

KEY_PREFIX = "sk_live_"
PREFIX_LENGTH = 12  # "sk_live_" plus four characters: enough to recognise a key, too few to matter
MAX_KEY_LENGTH = 512  # longer "keys" are refused before any hashing or lookup
_BEARER = "bearer"


def generate_key() -> str:
    """A new random API key: `sk_live_` + `secrets.token_urlsafe(32)` (43 chars)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: bytes, key: str) -> str:
    """The stored form of `key`: hex HMAC-SHA256 keyed by the server secret."""
    return hmac.digest(secret, key.encode(), "sha256").hex()


def verify_key(secret: bytes, key: str, key_hash: str) -> bool:
    """Whether `key` hashes to `key_hash`, compared in constant time."""
    return hmac.compare_digest(hash_key(secret, key), key_hash)


def key_prefix(key: str) -> str:
    """The displayable start of a key (`sk_live_abcd`)."""
    return key[:PREFIX_LENGTH]


def parse_bearer(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <key>` value, or None when absent or not Bearer.

    The scheme is case-insensitive (RFC 7235); surrounding whitespace is ignored.
    """
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != _BEARER:
        return None
    credential = credential.strip()
    return credential or None
