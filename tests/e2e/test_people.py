"""People's sign-in through Envoy, in both topologies (docs/reference.md §4 "People"): login, the
access token on chat and models, me, refresh rotation and reuse detection, logout within 2 s,
brute-force limits that never tell whether an email exists, and the JWK Set verifying tokens
signed by the current and by a previous key."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import httpx
import jwt
import openai
import pytest

from aggregator.auth.v1 import session_service_pb2, session_service_pb2_grpc
from aggregator.openai.v1 import chat_pb2, inference_service_pb2_grpc
from services.auth import admin
from services.auth.jwt_keys import private_key, raw_public
from services.auth.secret_files import parse_secret
from services.core.config import StoreUrls
from services.core.redis import create_redis
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
PASSWORD = "a long enough password"
# Every test client comes from one address (the one Envoy appends to x-forwarded-for).
ADDRESS_KEYS = "login:fail:address:*"


@pytest.fixture
async def anonymous(gateway: Gateway, store_urls: StoreUrls) -> AsyncIterator[httpx.AsyncClient]:
    """A client without credentials; the failed-login counters of addresses start empty (this
    session's Redis database is its own, tests/support/stores.py)."""
    redis = create_redis(store_urls.redis_url)

    async def forget() -> None:
        for key in await redis.keys(ADDRESS_KEYS):
            await redis.delete(key)

    await forget()
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        yield client
    await forget()
    await redis.aclose()


async def new_user(pool: asyncpg.Pool, role: str = "member") -> tuple[str, str]:
    email = f"person-{uuid.uuid4().hex[:10]}@example.com"
    return email, await admin.create_user(pool, "default", email, PASSWORD, role)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/v1/auth/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def refused_within(client: httpx.AsyncClient, token: str, deadline_s: float) -> None:
    started = time.monotonic()
    while True:
        sent = time.monotonic()  # judged at sending: one request may take seconds on a busy machine
        answer = await client.get("/v1/models", headers=bearer(token))
        if answer.status_code == 401:
            assert answer.json()["error"]["code"] == "invalid_api_key"
            return
        assert answer.status_code == 200, answer.text
        if sent - started >= deadline_s:
            raise AssertionError(f"the access token still works after {deadline_s} s")
        await asyncio.sleep(0.05)


async def test_login_token_works_like_a_key(gateway: Gateway, anonymous: httpx.AsyncClient,
                                            pool: asyncpg.Pool) -> None:
    email, user_id = await new_user(pool)
    answer = await login(anonymous, email.upper())
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    access = tokens["access_token"]
    chat = await anonymous.post("/v1/chat/completions", json=CHAT, headers=bearer(access))
    assert chat.status_code == 200, chat.text
    assert chat.json()["object"] == "chat.completion"
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=access, max_retries=0) as sdk:
        assert [m.id async for m in sdk.models.list()]
    me = await anonymous.get("/v1/auth/me", headers=bearer(access))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"]["id"] == user_id and body["user"]["email"] == email
    assert body["user"]["role"] == "member"
    assert body["organization"]["name"] == "default"
    assert body["permissions"] == ["inference", "read:models", "read:usage"]
    # Within its permissions: a member's token may not manage keys.
    denied = await anonymous.get("/v1/api-keys", headers=bearer(access))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    assert (await anonymous.get("/v1/auth/me")).status_code == 401


async def test_jwks_verifies_tokens_of_the_current_and_a_previous_key(
        anonymous: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    email, user_id = await new_user(pool, "admin")
    access = (await login(anonymous, email)).json()["access_token"]
    jwks = await anonymous.get("/.well-known/jwks.json")
    assert jwks.status_code == 200, jwks.text
    keys = {k["kid"]: k for k in jwks.json()["keys"]}
    header = jwt.get_unverified_header(access)
    assert header["alg"] == "EdDSA" and header["kid"] in keys
    claims = jwt.decode(access, jwt.PyJWK(keys[header["kid"]]), algorithms=["EdDSA"])
    assert claims["sub"] == user_id and claims["role"] == "admin"
    assert "admin:platform" in claims["permissions"]
    assert {"org", "exp", "iat", "jti", "sid"} <= set(claims)

    # A previous key: it no longer signs, but its tokens verify until they expire.
    secret = parse_secret(os.environ["AGGREGATOR_SECRET"])  # the running gateway's (harness.py)
    kid = f"previous-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    await pool.execute(
        "INSERT INTO signing_keys (kid, algorithm, public_key, created_at, sign_until, verify_until) "
        "VALUES ($1, 'EdDSA', $2, $3, $4, $5)", kid, raw_public(private_key(secret, kid).public_key()),
        now - timedelta(days=7), now - timedelta(minutes=1), now + timedelta(minutes=15))
    old = jwt.encode(claims | {"iat": int(time.time()) - 120, "jti": uuid.uuid4().hex},
                     private_key(secret, kid), algorithm="EdDSA", headers={"kid": kid})
    answer = await anonymous.get("/v1/models", headers=bearer(old))
    assert answer.status_code == 200, answer.text
    published = {k["kid"]: k for k in (await anonymous.get("/.well-known/jwks.json")).json()["keys"]}
    assert jwt.decode(old, jwt.PyJWK(published[kid]), algorithms=["EdDSA"])["sub"] == user_id
    # A key that stopped verifying stops its tokens too.
    await pool.execute("UPDATE signing_keys SET verify_until = now() WHERE kid = $1", kid)
    forged = jwt.encode(claims, private_key(secret, "never-stored"), algorithm="EdDSA",
                        headers={"kid": "never-stored"})
    assert (await anonymous.get("/v1/models", headers=bearer(forged))).status_code == 401


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(
        anonymous: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    email, _ = await new_user(pool)
    first = (await login(anonymous, email)).json()
    second = await anonymous.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    newer = second.json()
    assert newer["refresh_token"] != first["refresh_token"] and newer["access_token"] != first["access_token"]
    assert (await anonymous.get("/v1/models", headers=bearer(newer["access_token"]))).status_code == 200
    reused = await anonymous.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401 and reused.json()["error"]["code"] == "invalid_credentials"
    # The whole family is gone: the newer refresh token and the access tokens too.
    after = await anonymous.post("/v1/auth/refresh", json={"refresh_token": newer["refresh_token"]})
    assert after.status_code == 401, after.text
    await refused_within(anonymous, newer["access_token"], 2.0)
    await refused_within(anonymous, first["access_token"], 2.0)


async def test_logout_stops_the_access_token_within_two_seconds(
        anonymous: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    email, _ = await new_user(pool)
    tokens = (await login(anonymous, email)).json()
    assert (await anonymous.get("/v1/models", headers=bearer(tokens["access_token"]))).status_code == 200
    out = await anonymous.post("/v1/auth/logout", json={}, headers=bearer(tokens["access_token"]))
    assert out.status_code == 200 and out.json() == {"revoked": True}
    await refused_within(anonymous, tokens["access_token"], 2.0)
    again = await anonymous.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401


async def test_deleting_a_user_stops_its_access_token_within_two_seconds(
        anonymous: httpx.AsyncClient, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    email, user_id = await new_user(pool)
    tokens = (await login(anonymous, email)).json()
    assert (await anonymous.get("/v1/models", headers=bearer(tokens["access_token"]))).status_code == 200
    deleted = await http.delete(f"/v1/users/{user_id}")
    assert deleted.status_code == 200, deleted.text
    await refused_within(anonymous, tokens["access_token"], 2.0)


async def test_a_new_role_makes_the_user_sign_in_again_with_it(
        anonymous: httpx.AsyncClient, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """An access token carries the role it was signed with: a role change ends the user's sessions
    on every worker within 2 s, and the next sign-in carries the new role."""
    email, user_id = await new_user(pool)
    tokens = (await login(anonymous, email)).json()
    changed = await http.patch(f"/v1/users/{user_id}", json={"role": "admin"})
    assert changed.status_code == 200 and changed.json()["role"] == "admin", changed.text
    await refused_within(anonymous, tokens["access_token"], 2.0)
    refreshed = await anonymous.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401
    fresh = (await login(anonymous, email)).json()
    me = await anonymous.get("/v1/auth/me", headers=bearer(fresh["access_token"]))
    assert "write:api-keys" in me.json()["permissions"]


async def test_brute_force_is_429_and_never_tells_whether_the_email_exists(
        anonymous: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    email, _ = await new_user(pool)
    unknown = f"nobody-{uuid.uuid4().hex[:10]}@example.com"
    seen: dict[str, list[tuple[int, Any]]] = {}
    for who in (email, unknown):
        answers = [await login(anonymous, who, "not the password") for _ in range(6)]
        seen[who] = [(a.status_code, a.json()) for a in answers]
        assert [a.status_code for a in answers] == [401] * 5 + [429]
        assert 0 < int(answers[-1].headers["retry-after"]) <= 900
    assert seen[email] == seen[unknown]
    assert seen[email][0][1]["error"] == {"message": "Incorrect email or password.",
                                          "type": "invalid_request_error", "param": None,
                                          "code": "invalid_credentials"}
    assert seen[email][-1][1]["error"]["code"] == "rate_limit_exceeded"
    locked = await login(anonymous, email)  # the right password, on a locked account
    assert locked.status_code == 429 and locked.json() == seen[unknown][-1][1]


async def test_sign_ins_and_logouts_reach_the_audit_log(anonymous: httpx.AsyncClient, http: httpx.AsyncClient,
                                                        pool: asyncpg.Pool) -> None:
    email, user_id = await new_user(pool)
    tokens = (await login(anonymous, email)).json()
    assert (await login(anonymous, email, "not the password")).status_code == 401
    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    assert (await anonymous.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})).json()
    wanted = {("auth.login", f"user:{user_id}"), ("auth.login_failed", "anonymous"),
              ("auth.logout", f"session:{sid}")}
    found: set[tuple[str, str]] = set()
    started = time.monotonic()
    while time.monotonic() - started < 10 and not wanted <= found:
        for action in ("auth.login", "auth.login_failed", "auth.logout"):
            page = await http.get("/v1/audit-log", params={"action": action, "limit": 100})
            assert page.status_code == 200, page.text
            found |= {(row["action"], row["actor"]) for row in page.json()["data"] if row["target"] == user_id
                      or row["actor"] == f"session:{sid}"}
        await asyncio.sleep(0.2)
    assert wanted <= found
    assert email not in str(found) and tokens["refresh_token"] not in str(found)


async def test_native_grpc_takes_the_access_token_and_signs_in(gateway: Gateway, pool: asyncpg.Pool,
                                                               anonymous: httpx.AsyncClient) -> None:
    email, user_id = await new_user(pool)
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        tokens = await sessions.Login(session_service_pb2.LoginRequest(email=email, password=PASSWORD))
        metadata = (("authorization", f"Bearer {tokens.access_token}"),)
        me = await sessions.GetMe(session_service_pb2.GetMeRequest(), metadata=metadata)
        assert me.user.id == user_id
        inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = chat_pb2.ChatCompletionRequest(model="gpt-4o-mini",
                                                 messages=[chat_pb2.ChatMessage(role="user")])
        request.messages[0].content.string_value = "hi"
        assert (await inference.CreateChatCompletion(request, metadata=metadata)).choices
        await sessions.Logout(session_service_pb2.LogoutRequest(refresh_token=tokens.refresh_token))
    await refused_within(anonymous, tokens.access_token, 2.0)
