"""Bootstrap administration, called by `aggregator admin ...` and `aggregator up` (docs/reference.md §2).

Organizations are named by id or name; "default" is created on first use. Failures are
GatewayError with a message fit to print.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path

import asyncpg

from services.auth import repository, tenancy_repository
from services.auth.keys import MAX_KEY_LENGTH, generate_key, hash_key, key_prefix
from services.auth.management import issue_key
from services.auth.passwords import hash_password
from services.auth.secret_files import write_once
from services.auth.validation import validate_role, validate_settings
from services.core.errors import GatewayError, Reason, quote

log = logging.getLogger(__name__)

ADMIN_KEY_ENV = "AGGREGATOR_ADMIN_KEY"
ADMIN_KEY_FILE = "admin-key"
CLI_ACTOR = "cli"
BOOTSTRAP_ACTOR = "bootstrap"
MIN_PASSWORD_LENGTH = 8


async def resolve_org(pool: asyncpg.Pool, org: str) -> str:
    """The id of the organization with this id or name; "default" is created when missing."""
    if org == repository.DEFAULT_ORGANIZATION:
        return await repository.ensure_organization(pool)
    org_id = await repository.find_organization(pool, org)
    if org_id is None:
        raise GatewayError(Reason.NOT_FOUND, f"No organization {org!r}.", param="org")
    return org_id


async def create_org(pool: asyncpg.Pool, name: str) -> str:
    """Creates an organization; answers its id."""
    name = name.strip()
    if not name or len(name) > 200:
        raise GatewayError(Reason.INVALID_REQUEST, "An organization name has 1 to 200 characters.",
                           param="name")
    return await repository.create_organization(pool, name, CLI_ACTOR)


async def create_user(pool: asyncpg.Pool, org: str, email: str, password: str, role: str = "member") -> str:
    """Creates a user of organization `org` (id or name) with an argon2id password hash; answers its id."""
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise GatewayError(Reason.INVALID_REQUEST, "Invalid email address.", param="email")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise GatewayError(Reason.INVALID_REQUEST,
                           f"A password has at least {MIN_PASSWORD_LENGTH} characters.", param="password")
    role = validate_role(role)
    org_id = await resolve_org(pool, org)
    return await repository.create_user(pool, org_id, email, hash_password(password), role, CLI_ACTOR)


async def reset_password(pool: asyncpg.Pool, email: str, password: str) -> str:
    """Gives the user with this email (any case) a new argon2id password hash; answers the user's id."""
    email = email.strip().lower()
    if len(password) < MIN_PASSWORD_LENGTH:
        raise GatewayError(Reason.INVALID_REQUEST,
                           f"A password has at least {MIN_PASSWORD_LENGTH} characters.", param="password")
    user_id = await tenancy_repository.set_password(pool, email, hash_password(password), CLI_ACTOR)
    if user_id is None:
        raise GatewayError(Reason.NOT_FOUND, f"No user with the email {quote(email)}.", param="email")
    return user_id


async def create_key(pool: asyncpg.Pool, secret: bytes, org: str, name: str = "", role: str = "member", *,
                     allowed_models: Iterable[str] | None = None, rate_limit_per_minute: int | None = None,
                     rate_limit_per_hour: int | None = None, rate_limit_per_day: int | None = None,
                     tokens_per_minute: int | None = None, expires_at: datetime | None = None,
                     user_id: str | None = None) -> str:
    """Creates an API key of organization `org` (id or name); answers the plaintext, to print once."""
    settings = validate_settings(name=name, role=role, allowed_models=allowed_models, expires_at=expires_at,
                                 rate_limit_per_minute=rate_limit_per_minute,
                                 rate_limit_per_hour=rate_limit_per_hour,
                                 rate_limit_per_day=rate_limit_per_day, tokens_per_minute=tokens_per_minute)
    org_id = await resolve_org(pool, org)
    _, plaintext = await issue_key(pool, secret, org_id, settings, CLI_ACTOR, user_id=user_id)
    return plaintext


async def _register_admin_key(pool: asyncpg.Pool, secret: bytes, key: str, name: str) -> bool:
    org_id = await repository.ensure_organization(pool)
    return await repository.upsert_admin_key(pool, organization_id=org_id, key_hash=hash_key(secret, key),
                                             prefix=key_prefix(key), name=name, actor=BOOTSTRAP_ACTOR)


def revoked_warning(source: str) -> str:
    """The one line `up` prints when the bootstrap admin key it was given has been revoked."""
    return (f"the admin key {source} was revoked through the API and stays revoked; to get an admin key "
            f"back, set a different {ADMIN_KEY_ENV} or run `aggregator admin create-key --role admin`")


async def ensure_bootstrap_admin_key(pool: asyncpg.Pool, secret: bytes, data_dir: Path | str,
                                     environ: Mapping[str, str] | None = None, *,
                                     warn: Callable[[str], None] | None = None) -> str | None:
    """Makes sure an admin key exists in the default organization (docs/reference.md §2); answers a newly
    created key, which the caller prints once, else None.

    * `AGGREGATOR_ADMIN_KEY` set: that exact value is made an admin key of the default organization
      (inserted when the database has never seen it). Answers None.
    * Otherwise the first call creates a key and writes it to `<data-dir>/admin-key` (0600).
      Later calls find the file: if its key is stored and live nothing happens; if the database
      has never seen it (a fresh database), it is registered again.

    Either way a key that was revoked stays revoked: revoking a leaked admin key must survive the
    next restart. `warn` (default: the log) then gets one line saying so and how to recover.
    """
    warn = warn or log.warning
    env = os.environ if environ is None else environ
    env_key = env.get(ADMIN_KEY_ENV, "").strip()
    if env_key:
        if len(env_key) > MAX_KEY_LENGTH:
            raise GatewayError(Reason.INVALID_REQUEST,
                               f"{ADMIN_KEY_ENV} is longer than {MAX_KEY_LENGTH} characters.")
        if await repository.key_state(pool, hash_key(secret, env_key)) == "revoked":
            warn(revoked_warning(f"in {ADMIN_KEY_ENV}"))
            return None
        await _register_admin_key(pool, secret, env_key, f"bootstrap admin ({ADMIN_KEY_ENV})")
        return None
    path = Path(data_dir) / ADMIN_KEY_FILE
    if not path.exists():
        key = generate_key()
        # The file first: if we crash before the insert, the next start registers the same key.
        if write_once(path, key + "\n"):
            await _register_admin_key(pool, secret, key, "bootstrap admin")
            return key
    key = path.read_text().strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise GatewayError(Reason.INVALID_REQUEST,
                           f"{path} does not hold an API key; delete it to create one.")
    state = await repository.key_state(pool, hash_key(secret, key))
    if state is None:
        await _register_admin_key(pool, secret, key, "bootstrap admin")
        log.info("registered the admin key kept in %s", path)
    elif state == "revoked":
        warn(revoked_warning(f"in {path}"))
    return None
