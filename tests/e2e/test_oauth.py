"""OAuth 2.0 through Envoy in both topologies (docs/reference.md §4 "OAuth 2.0"), driven by a real
OAuth client library (Authlib's AsyncOAuth2Client): the authorization-code grant with PKCE giving a
scoped API key, client credentials giving a short-lived JWT, RFC 7009 revocation, single-use and
expiring codes, exact redirect URIs, RFC 6749 errors, deletion revoking what a client obtained,
organization isolation, and the audit rows of each grant."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import openai
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from services.auth import admin
from tests.e2e.harness import Gateway
from tests.e2e.test_people import PASSWORD, bearer, login

pytestmark = pytest.mark.e2e
REDIRECT = "http://127.0.0.1:8765/callback"
AUTHORIZE = "/v1/oauth/authorize"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def web(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        yield client


async def user_token(web: httpx.AsyncClient, pool: asyncpg.Pool, org: str = "default",
                     role: str = "member") -> tuple[str, str]:
    """A new user's id and access token."""
    email = f"oauth-{uuid.uuid4().hex[:10]}@example.com"
    user_id = await admin.create_user(pool, org, email, PASSWORD, role)
    answer = await login(web, email)
    assert answer.status_code == 200, answer.text
    return user_id, answer.json()["access_token"]


async def register(web: httpx.AsyncClient, key: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "Notes app", "redirect_uris": [REDIRECT], "confidential": False, **fields}
    answer = await web.post("/v1/oauth/clients", json=body, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    return answer.json()


def authlib_client(gateway: Gateway, client_id: str, secret: str | None = None,
                   **options: Any) -> AsyncOAuth2Client:
    if secret is None:
        options.setdefault("token_endpoint_auth_method", "none")
    return AsyncOAuth2Client(client_id=client_id, client_secret=secret, base_url=gateway.base_url, timeout=30,
                             **options)


async def approve(web: httpx.AsyncClient, url: str, token: str) -> httpx.Response:
    """The signed-in user's browser visiting the authorization URL."""
    return await web.get(url, headers=bearer(token), follow_redirects=False)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def refused_within(web: httpx.AsyncClient, credential: str, deadline_s: float = 2.0) -> None:
    started = time.monotonic()
    while True:
        sent = time.monotonic()  # judged at sending: one request may take seconds on a busy machine
        answer = await web.get("/v1/models", headers=bearer(credential))
        if answer.status_code == 401:
            return
        assert answer.status_code == 200, answer.text
        assert sent - started < deadline_s, f"still accepted after {deadline_s} s"
        await asyncio.sleep(0.05)


async def actions(pool: asyncpg.Pool, target: str) -> list[str]:
    rows = await pool.fetch("SELECT action FROM audit_log WHERE target = $1 ORDER BY id", target)
    return [r["action"] for r in rows]


async def test_pkce_flow_gives_a_scoped_key_of_the_users_organization(
        gateway: Gateway, web: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    registered = await register(web, gateway.admin_key, scopes=["inference", "read:models"])
    assert registered["object"] == "oauth_client" and "client_secret" not in registered
    user_id, token = await user_token(web, pool)
    verifier = generate_token(64)
    async with authlib_client(gateway, registered["id"], redirect_uri=REDIRECT, scope="inference read:models",
                              code_challenge_method="S256") as app:
        url, state = app.create_authorization_url(gateway.base_url + AUTHORIZE, code_verifier=verifier)
        redirect = await approve(web, url, token)
        assert redirect.status_code == 302, redirect.text
        location = redirect.headers["location"]
        assert location.startswith(REDIRECT + "?") and redirect.headers["cache-control"] == "no-store"
        params = query_of(location)
        assert params["state"] == state and params.get("code", "").startswith("oac_"), location
        assert redirect.json() == {"redirect_to": location}

        issued = await app.fetch_token(gateway.base_url + "/v1/oauth/token", authorization_response=location,
                                       code_verifier=verifier)
    key = issued["access_token"]
    assert key.startswith("sk_live_") and issued["token_type"] == "bearer"
    assert issued["scope"] == "inference read:models"

    # The key is the user's, in the user's organization, narrowed to the approved scopes.
    row = await pool.fetchrow("SELECT user_id, oauth_client_id, scopes, name, organization_id FROM api_keys "
                              "WHERE id = $1::uuid", issued["key_id"])
    assert str(row["user_id"]) == user_id and str(row["oauth_client_id"]) == registered["id"]
    assert list(row["scopes"]) == ["inference", "read:models"] and row["name"] == "Notes app (OAuth)"
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(**CHAT)
        assert completion.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError):
            await sdk.with_options(max_retries=0).get("/api-keys", cast_to=object)

    # A code is single-use: presenting it again is invalid_grant and revokes the key it gave.
    again = await web.post("/v1/oauth/token", data={
        "grant_type": "authorization_code", "code": params["code"], "redirect_uri": REDIRECT,
        "client_id": registered["id"], "code_verifier": verifier})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert set(again.json()) == {"error", "error_description"}
    await refused_within(web, key)

    assert await actions(pool, registered["id"]) == ["oauth_client.create", "oauth.authorize",
                                                     "oauth.code_reuse"]
    assert await actions(pool, issued["key_id"]) == ["api_key.create", "oauth.token"]


async def test_a_code_needs_the_right_verifier_redirect_uri_client_and_time(
        gateway: Gateway, web: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    registered = await register(web, gateway.admin_key, redirect_uris=[REDIRECT, "https://app.example/cb"])
    other = await register(web, gateway.admin_key)
    _, token = await user_token(web, pool)

    async def code_for(**extra: str) -> tuple[str, str]:
        verifier = generate_token(48)
        async with authlib_client(gateway, registered["id"], redirect_uri=REDIRECT,
                                  code_challenge_method="S256") as app:
            url, _ = app.create_authorization_url(gateway.base_url + AUTHORIZE, code_verifier=verifier,
                                                  **extra)
        answer = await approve(web, url, token)
        assert answer.status_code == 302, answer.text
        return query_of(answer.headers["location"])["code"], verifier

    async def exchange(code: str, verifier: str, client_id: str = "",
                       redirect_uri: str = REDIRECT) -> httpx.Response:
        return await web.post("/v1/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": client_id or registered["id"], "code_verifier": verifier})

    code, verifier = await code_for()
    wrong = await exchange(code, generate_token(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert "code_verifier" in wrong.json()["error_description"]
    # A failed exchange spends the code: a thief gets one try.
    assert (await exchange(code, verifier)).json()["error"] == "invalid_grant"

    code, verifier = await code_for()
    elsewhere = await exchange(code, verifier, redirect_uri="https://app.example/cb")
    assert elsewhere.json()["error"] == "invalid_grant"
    code, verifier = await code_for()
    assert (await exchange(code, verifier, client_id=other["id"])).json()["error"] == "invalid_grant"

    code, verifier = await code_for()
    await pool.execute("UPDATE oauth_codes SET expires_at = now() - interval '1 second'")
    expired = await exchange(code, verifier)
    assert expired.status_code == 400 and "expired" in expired.json()["error_description"]

    code, verifier = await code_for()
    assert (await exchange(code, verifier)).status_code == 200


async def test_authorization_errors_redirect_only_to_a_registered_uri(
        gateway: Gateway, web: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    registered = await register(web, gateway.admin_key)
    _, token = await user_token(web, pool)
    challenge = base64.urlsafe_b64encode(b"x" * 32).rstrip(b"=").decode()
    base = {"response_type": "code", "client_id": registered["id"], "redirect_uri": REDIRECT, "state": "s1",
            "code_challenge": challenge, "code_challenge_method": "S256"}

    async def authorize(**changes: str | None) -> httpx.Response:
        params = {k: v for k, v in {**base, **changes}.items() if v is not None}
        return await web.get("/v1/oauth/authorize", params=params, headers=bearer(token))

    # Not registered exactly, or an unknown client: an error here, never a redirect.
    for changes in ({"redirect_uri": REDIRECT + "/"}, {"redirect_uri": "https://evil.example/cb"},
                    {"client_id": str(uuid.uuid4())}, {"client_id": "nope"}):
        answer = await authorize(**changes)
        assert answer.status_code == 400 and "location" not in answer.headers, changes
        assert answer.json()["error"] == "invalid_request"
    # The rest go back to the client with error and state.
    for changes, error in (({"code_challenge": None}, "invalid_request"),
                           ({"code_challenge_method": "plain"}, "invalid_request"),
                           ({"response_type": "token"}, "unsupported_response_type"),
                           ({"scope": "admin:platform"}, "invalid_scope"),
                           ({"scope": "read:everything"}, "invalid_scope")):
        answer = await authorize(**changes)
        assert answer.status_code == 302, (changes, answer.text)
        params = query_of(answer.headers["location"])
        assert params["error"] == error and params["state"] == "s1" and "code" not in params, changes
    # An API key cannot approve: only a signed-in user can.
    by_key = await web.get("/v1/oauth/authorize", params=base, headers=bearer(gateway.admin_key))
    assert by_key.status_code == 403 and by_key.json()["error"]["code"] == "permission_denied"
    assert (await web.get("/v1/oauth/authorize", params=base)).status_code == 401


async def test_client_credentials_give_a_short_lived_token_that_revocation_ends(
        gateway: Gateway, web: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    registered = await register(web, gateway.admin_key, confidential=True,
                                scopes=["read:models", "read:usage"])
    secret = registered["client_secret"]
    assert secret.startswith("ocs_")
    listed = (await web.get("/v1/oauth/clients", headers=bearer(gateway.admin_key))).json()
    assert registered["id"] in [c["id"] for c in listed["data"]]
    assert all("client_secret" not in c for c in listed["data"])
    stored = await pool.fetchval("SELECT secret_hash FROM oauth_clients WHERE id = $1::uuid",
                                 registered["id"])
    assert secret not in stored

    async with authlib_client(gateway, registered["id"], secret, scope="read:models") as app:
        issued = await app.fetch_token(gateway.base_url + "/v1/oauth/token", grant_type="client_credentials")
        token = issued["access_token"]
        assert issued["expires_in"] == 900 and issued["scope"] == "read:models" and token.count(".") == 2
        assert (await web.get("/v1/models", headers=bearer(token))).status_code == 200
        me = (await web.get("/v1/auth/me", headers=bearer(token))).json()
        assert me["permissions"] == ["read:models"] and "user" not in me
        assert (await web.post("/v1/chat/completions", json=CHAT, headers=bearer(token))).status_code == 403
        revoked = await app.revoke_token(gateway.base_url + "/v1/oauth/revoke", token=token)
        assert revoked.status_code == 200 and revoked.json() == {}
    await refused_within(web, token)
    # RFC 7009: an unknown token is not an error.
    async with authlib_client(gateway, registered["id"], secret) as app:
        unknown = await app.revoke_token(gateway.base_url + "/v1/oauth/revoke", token="sk_live_unknown")
        assert unknown.status_code == 200

    async with authlib_client(gateway, registered["id"], "ocs_wrong") as app:
        with pytest.raises(OAuthError) as caught:
            await app.fetch_token(gateway.base_url + "/v1/oauth/token", grant_type="client_credentials")
    assert caught.value.error == "invalid_client"
    bad = await web.post("/v1/oauth/token", data={"grant_type": "client_credentials"},
                         auth=(registered["id"], "x"))
    assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Basic")
    public = await register(web, gateway.admin_key)
    refused = await web.post("/v1/oauth/token",
                             data={"grant_type": "client_credentials", "client_id": public["id"]})
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
    for data, error in (({"grant_type": "password"}, "unsupported_grant_type"),
                        ({"grant_type": "client_credentials", "scope": "write:users"}, "invalid_scope")):
        answer = await web.post("/v1/oauth/token", data=data, auth=(registered["id"], secret))
        assert answer.status_code == 400 and answer.json()["error"] == error, answer.text
    as_json = await web.post("/v1/oauth/token", json={"grant_type": "client_credentials"},
                             auth=(registered["id"], secret))
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    assert await actions(pool, registered["id"]) == ["oauth_client.create", "oauth.token"]


async def test_deleting_a_client_revokes_its_keys_and_tokens(
        gateway: Gateway, web: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    registered = await register(web, gateway.admin_key, confidential=True)
    _, token = await user_token(web, pool)
    verifier = generate_token(48)
    async with authlib_client(gateway, registered["id"], registered["client_secret"], redirect_uri=REDIRECT,
                              code_challenge_method="S256") as app:
        url, _ = app.create_authorization_url(gateway.base_url + AUTHORIZE, code_verifier=verifier)
        location = (await approve(web, url, token)).headers["location"]
        key = (await app.fetch_token(gateway.base_url + "/v1/oauth/token", authorization_response=location,
                                     code_verifier=verifier))["access_token"]
        access = (await app.fetch_token(gateway.base_url + "/v1/oauth/token",
                                        grant_type="client_credentials"))["access_token"]
    for credential in (key, access):
        assert (await web.get("/v1/models", headers=bearer(credential))).status_code == 200
    deleted = await web.delete(f"/v1/oauth/clients/{registered['id']}", headers=bearer(gateway.admin_key))
    assert deleted.json() == {"id": registered["id"], "object": "oauth_client", "deleted": True}
    for credential in (key, access):
        await refused_within(web, credential)
    again = await web.delete(f"/v1/oauth/clients/{registered['id']}", headers=bearer(gateway.admin_key))
    assert again.status_code == 200  # idempotent
    listed = (await web.get("/v1/oauth/clients", headers=bearer(gateway.admin_key))).json()
    assert registered["id"] not in [c["id"] for c in listed["data"]]


async def test_organizations_do_not_see_or_use_each_others_clients(
        gateway: Gateway, web: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    org_name = f"oauth-org-{uuid.uuid4().hex[:8]}"
    await admin.create_org(pool, org_name)
    admin_id, admin_token = await user_token(web, pool, org_name, role="admin")
    theirs = await register(web, admin_token)
    ours = await register(web, gateway.admin_key)
    listed = (await web.get("/v1/oauth/clients", headers=bearer(gateway.admin_key))).json()["data"]
    assert theirs["id"] not in [c["id"] for c in listed]
    # Another organization's client id is 404 to delete, like one that does not exist.
    gone = await web.delete(f"/v1/oauth/clients/{theirs['id']}", headers=bearer(gateway.admin_key))
    assert gone.status_code == 404
    mine = await web.delete(f"/v1/oauth/clients/{ours['id']}", headers=bearer(admin_token))
    assert mine.status_code == 404
    # A user of the default organization cannot approve that organization's client ...
    _, member_token = await user_token(web, pool)
    challenge = base64.urlsafe_b64encode(b"y" * 32).rstrip(b"=").decode()
    params = {"response_type": "code", "client_id": theirs["id"], "code_challenge": challenge,
              "code_challenge_method": "S256"}
    refused = await web.get("/v1/oauth/authorize", params=params, headers=bearer(member_token))
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    # ... while a client of the platform organization serves users of every organization.
    params["client_id"] = ours["id"]
    approved = await web.get("/v1/oauth/authorize", params=params, headers=bearer(admin_token))
    assert approved.status_code == 302 and "code=" in approved.headers["location"]
    # Members may not register clients.
    _, member = await user_token(web, pool)
    denied = await web.post("/v1/oauth/clients", json={"name": "x", "redirect_uris": [REDIRECT]},
                            headers=bearer(member))
    assert denied.status_code == 403 and "write:oauth-clients" in denied.json()["error"]["message"]
    bad = await web.post("/v1/oauth/clients", json={"name": "x", "redirect_uris": ["http://example.com/cb"]},
                         headers=bearer(gateway.admin_key))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "redirect_uris"
    assert admin_id
