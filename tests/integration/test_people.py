"""People's sign-in on real PostgreSQL, Redis and NATS (docs/reference.md §4 "People").

Two processes' worth of auth components (each with its own pool, NATS connection, Redis client and
caches) show that a logout or a reused refresh token stops the access token in the other process
within 2 s, and that a warm verification reads no database row.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
import pytest

from services.auth import admin
from services.auth.assembly import AuthComponents, build_auth
from services.auth.jwt_keys import ACCESS_TOKEN_TTL_S
from services.auth.login import ACCOUNT_LIMIT, BAD_LOGIN, principal_of
from services.auth.login_servicer import PeopleComponents, build_people
from services.auth.permissions import ROLE_PERMISSIONS
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.errors import GatewayError, Reason
from services.core.nats import connect_nats
from services.core.redis import create_redis

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = os.urandom(32)
DEADLINE_S = 2.0
PASSWORD = "correct horse battery"


@dataclass
class Process:
    pool: asyncpg.Pool
    nc: Any
    redis: Any
    auth: AuthComponents
    people: PeopleComponents
    audited: list[dict[str, Any]]

    async def authenticate(self, token: str) -> Any:
        return await self.auth.authenticator.authenticate(f"Bearer {token}")


async def start(store_urls: StoreUrls, database_url: str, name: str) -> Process:
    pool = await create_pool(database_url)
    nc = await connect_nats(store_urls.nats_url, name=name)
    redis = create_redis(store_urls.redis_url)
    auth = await build_auth(pool, SECRET, nc)
    audited: list[dict[str, Any]] = []
    people = await build_people(pool, SECRET, redis, auth.authenticator, nc,
                                audit=lambda **entry: audited.append(entry))
    return Process(pool, nc, redis, auth, people, audited)


async def stop(process: Process) -> None:
    await process.people.close()
    await process.auth.close()
    await process.redis.aclose()
    await process.nc.close()
    await process.pool.close()


@pytest.fixture(scope="module")
async def process_a(store_urls: StoreUrls, migrated_database_url: str) -> AsyncIterator[Process]:
    process = await start(store_urls, migrated_database_url, "test-people-a")
    yield process
    await stop(process)


@pytest.fixture(scope="module")
async def process_b(store_urls: StoreUrls, migrated_database_url: str) -> AsyncIterator[Process]:
    process = await start(store_urls, migrated_database_url, "test-people-b")
    yield process
    await stop(process)


async def new_user(pool: asyncpg.Pool, role: str = "member") -> tuple[str, str]:
    org_id = await admin.create_org(pool, f"people-{uuid.uuid4().hex[:8]}")
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    return email, await admin.create_user(pool, org_id, email, PASSWORD, role)


def principal_of_token(token: str) -> Any:
    return principal_of(jwt.decode(token, options={"verify_signature": False}))


async def refused_within(authenticate: Callable[[], Awaitable[Any]], deadline_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            await authenticate()
        except GatewayError as error:
            assert error.reason is Reason.INVALID_API_KEY
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"still accepted after {deadline_s} s")


async def test_login_gives_a_jwt_that_authenticates_like_a_key(process_a: Process,
                                                                process_b: Process) -> None:
    email, user_id = await new_user(process_a.pool, "admin")
    tokens = await process_a.people.people.login(email.upper(), PASSWORD, "198.51.100.1")
    assert tokens.token_type == "bearer" and tokens.expires_in == ACCESS_TOKEN_TTL_S
    assert tokens.refresh_token.startswith("rt_")
    header = jwt.get_unverified_header(tokens.access_token)
    assert header["alg"] == "EdDSA" and header["kid"]
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    assert claims["sub"] == user_id and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == ACCESS_TOKEN_TTL_S and claims["jti"] and claims["sid"]
    assert claims["permissions"] == list(ROLE_PERMISSIONS["admin"])
    # Neither the refresh token nor a private key is stored in plain text.
    stored = await process_a.pool.fetch("SELECT token_hash FROM refresh_tokens WHERE session_id = $1::uuid",
                                        claims["sid"])
    assert len(stored) == 1 and tokens.refresh_token not in stored[0]["token_hash"]
    for process in (process_a, process_b):
        principal = await process.authenticate(tokens.access_token)
        assert principal.user_id == user_id and principal.session_id == claims["sid"]
        assert principal.organization_id == claims["org"] and not principal.api_key_id
        assert list(principal.permissions) == claims["permissions"]
    me = await process_b.people.people.me(principal_of(claims))
    assert me.user.email == email and me.user.id == user_id and me.organization.id == claims["org"]


async def test_a_warm_verification_reads_no_database(process_a: Process) -> None:
    email, _ = await new_user(process_a.pool)
    tokens = await process_a.people.people.login(email, PASSWORD, "198.51.100.2")
    await process_a.authenticate(tokens.access_token)  # warms the session state
    pool, process_a.people.people.keyring._pool = process_a.people.people.keyring._pool, None  # type: ignore[assignment]
    store_pool, process_a.people.people.store._pool = process_a.people.people.store._pool, None  # type: ignore[assignment]
    try:
        principal = await process_a.authenticate(tokens.access_token)
    finally:
        process_a.people.people.keyring._pool = pool
        process_a.people.people.store._pool = store_pool
    assert principal.user_id


async def test_tampered_and_foreign_tokens_are_refused(process_a: Process) -> None:
    email, _ = await new_user(process_a.pool)
    token = (await process_a.people.people.login(email, PASSWORD, "198.51.100.3")).access_token
    head, body, signature = token.split(".")
    forged_claims = jwt.decode(token, options={"verify_signature": False}) | {"role": "admin"}
    forged = jwt.encode(forged_claims, "not-our-key-but-long-enough-for-hs256-0123456789", algorithm="HS256",
                        headers={"kid": jwt.get_unverified_header(token)["kid"]})
    for bad in (f"{head}.{body}.{signature[:-4]}AAAA", forged):
        with pytest.raises(GatewayError) as caught:
            await process_a.authenticate(bad)
        assert caught.value.reason is Reason.INVALID_API_KEY


async def test_refresh_rotates_and_reuse_revokes_the_family(process_a: Process, process_b: Process) -> None:
    email, _ = await new_user(process_a.pool)
    first = await process_a.people.people.login(email, PASSWORD, "198.51.100.4")
    second = await process_a.people.people.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token and second.access_token != first.access_token
    await process_b.authenticate(second.access_token)  # process B holds the session as live
    with pytest.raises(GatewayError) as caught:
        await process_a.people.people.refresh(first.refresh_token)  # spent: the family is revoked
    assert caught.value.reason is Reason.INVALID_CREDENTIALS
    with pytest.raises(GatewayError):
        await process_a.people.people.refresh(second.refresh_token)
    assert await refused_within(lambda: process_b.authenticate(second.access_token), DEADLINE_S) < DEADLINE_S


async def test_logout_stops_the_access_token_in_every_process(process_a: Process, process_b: Process) -> None:
    email, _ = await new_user(process_a.pool)
    tokens = await process_a.people.people.login(email, PASSWORD, "198.51.100.5")
    for process in (process_a, process_b):
        await process.authenticate(tokens.access_token)
    await process_a.people.people.logout("", tokens.access_token)
    for process in (process_a, process_b):
        await refused_within(functools.partial(process.authenticate, tokens.access_token), DEADLINE_S)
    with pytest.raises(GatewayError):
        await process_b.people.people.refresh(tokens.refresh_token)
    sid = jwt.decode(tokens.access_token, options={"verify_signature": False})["sid"]
    actions = [(e["action"], e["actor"]) for e in process_a.audited if sid in str(e.get("details"))]
    assert actions[-2:] == [("auth.login", f"user:{principal_of_token(tokens.access_token).user_id}"),
                            ("auth.logout", f"session:{sid}")]


async def test_failed_logins_lock_accounts_alike_whether_they_exist(process_a: Process) -> None:
    email, _ = await new_user(process_a.pool)
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    answers = []
    for who in (email, unknown):
        seen = []
        for attempt in range(ACCOUNT_LIMIT + 1):
            with pytest.raises(GatewayError) as caught:
                await process_a.people.people.login(who, "wrong password!", f"203.0.113.{attempt}")
            seen.append((caught.value.reason, caught.value.message))
        answers.append(seen)
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 900
    assert answers[0] == answers[1]
    assert answers[0][0] == (Reason.INVALID_CREDENTIALS, BAD_LOGIN)
    assert answers[0][-1][0] is Reason.RATE_LIMITED
    # Locked means locked: even the right password is refused now.
    with pytest.raises(GatewayError) as caught:
        await process_a.people.people.login(email, PASSWORD, "203.0.113.99")
    assert caught.value.reason is Reason.RATE_LIMITED


async def test_one_address_is_limited_across_accounts(process_a: Process) -> None:
    address = f"192.0.2.{uuid.uuid4().int % 250}"
    await process_a.redis.delete(f"login:fail:address:{address}")
    for _ in range(20):
        with pytest.raises(GatewayError) as caught:
            await process_a.people.people.login(f"x-{uuid.uuid4().hex[:8]}@example.com", "nope nope", address)
        assert caught.value.reason is Reason.INVALID_CREDENTIALS
    with pytest.raises(GatewayError) as caught:
        await process_a.people.people.login(f"y-{uuid.uuid4().hex[:8]}@example.com", "nope nope", address)
    assert caught.value.reason is Reason.RATE_LIMITED and caught.value.retry_after


async def test_rotation_keeps_old_tokens_valid_and_jwks_verifies(process_a: Process,
                                                                  process_b: Process) -> None:
    email, _ = await new_user(process_a.pool)
    old = (await process_a.people.people.login(email, PASSWORD, "198.51.100.6")).access_token
    old_kid = jwt.get_unverified_header(old)["kid"]
    new_kid = await process_a.people.people.keyring.rotate()
    assert new_kid != old_kid
    new = (await process_a.people.people.login(email, PASSWORD, "198.51.100.6")).access_token
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    for process in (process_a, process_b):
        for token in (old, new):
            assert (await process.authenticate(token)).user_id
    jwks = await process_b.people.people.keyring.reload()
    published = {k.kid: k.jwk() for k in jwks}
    assert {old_kid, new_kid} <= set(published)
    for token in (old, new):
        kid = jwt.get_unverified_header(token)["kid"]
        key = jwt.PyJWK(published[kid])
        assert jwt.decode(token, key, algorithms=["EdDSA"])["sub"]
    row = await process_a.pool.fetchrow("SELECT * FROM signing_keys WHERE kid = $1", old_kid)
    assert set(row.keys()) == {"kid", "algorithm", "public_key", "created_at", "sign_until", "verify_until"}
