"""Password hashing for people (dashboard users): argon2id via argon2-cffi.

Passwords are low-entropy, so they get a deliberately slow hash; API keys do not (see keys.py).
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


def hash_password(password: str) -> str:
    """An argon2id hash of `password` in PHC string format (salt and parameters included)."""
    return PasswordHasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash`; False (never an exception) on any mismatch."""
    try:
        return PasswordHasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
