"""OAuth 2.0 for third-party apps: the flows behind OAuthService (docs/reference.md §4 "OAuth 2.0").

* Clients are registered by an organization's admins. A client may be approved by users of its
  own organization, and a client of the platform organization by users of any organization.
* Authorization code + PKCE (S256 only): a signed-in user (an access token, not an API key)
  approves; the code (`oac_…`, kept as an HMAC) is single-use and lives 60 s. The client exchanges
  it, proving the verifier, for a new API key of the user's organization, bound to the user and
  the client and narrowed to the approved scopes (never more than the user holds). A code
  presented twice revokes the key it gave.
* Client credentials: a confidential client gets a 15-minute JWT for itself, signed like people's
  access tokens and tied to a session without a user, so revocation is a logout (sessions.py).
* Revocation (RFC 7009) ends a key or access token the presenting client obtained; anything else
  is silently ignored, as the RFC asks.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg

from aggregator.auth.v1 import auth_service_pb2, oauth_service_pb2
from services.auth import oauth_repository as store
from services.auth.audit_repository import actor_of
from services.auth.jwt_keys import ACCESS_TOKEN_TTL_S, looks_like_jwt
from services.auth.keys import generate_key, hash_key, key_prefix
from services.auth.login import People
from services.auth.management import ApiKeyManager
from services.auth.oauth_protocol import (
    ACCESS_DENIED,
    DEFAULT_SCOPES,
    INVALID_CLIENT,
    INVALID_GRANT,
    INVALID_REQUEST,
    INVALID_SCOPE,
    UNAUTHORIZED_CLIENT,
    UNSUPPORTED_GRANT_TYPE,
    UNSUPPORTED_RESPONSE_TYPE,
    ClientCredentials,
    OAuthError,
    client_credentials,
    parse_scope,
    pkce_matches,
    scope_string,
    token_json,
    valid_challenge,
    validate_client_name,
    validate_redirect_uris,
    with_query,
)
from services.auth.permissions import ROLE_PERMISSIONS, PlatformOrganization, permissions_for
from services.auth.records import KeySettings
from services.auth.tenancy import page_after, page_limit
from services.auth.tenancy_repository import Page
from services.auth.validation import key_id, validate_scopes
from services.core.errors import GatewayError, Reason, quote

CODE_PREFIX = "oac_"
SECRET_PREFIX = "ocs_"
CODE_TTL = timedelta(seconds=60)
MAX_STATE_LENGTH = 1000
_KEY_NAME_LIMIT = 200
Registered = tuple[store.ClientRow, str | None]  # a new client and its secret (None when public)


def client_not_found(ident: str) -> GatewayError:
    return GatewayError(Reason.NOT_FOUND, f"No OAuth client found with id {quote(ident)}.", param="id")


def client_message(row: store.ClientRow, secret: str | None = None) -> oauth_service_pb2.OAuthClient:
    message = oauth_service_pb2.OAuthClient(
        id=row.id, object="oauth_client", name=row.name, redirect_uris=row.redirect_uris,
        confidential=row.confidential, scopes=row.scopes, organization_id=row.organization_id)
    message.created_at.FromDatetime(row.created_at)
    if secret is not None:
        message.client_secret = secret
    return message


class OAuthProvider:
    """The OAuth 2.0 authorization server of one process."""

    def __init__(self, pool: asyncpg.Pool, secret: bytes, people: People, keys: ApiKeyManager,
                 platform: PlatformOrganization, *, clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._secret = secret
        self._people = people
        self._keys = keys
        self._platform = platform
        self._clock = clock

    # -- clients -------------------------------------------------------------------------------

    async def register(self, caller: auth_service_pb2.Principal,
                       request: oauth_service_pb2.CreateOAuthClientRequest) -> Registered:
        """A new client of the caller's organization, with its secret when confidential. Its
        scopes may not exceed the caller's permissions."""
        scopes = validate_scopes(request.scopes) or DEFAULT_SCOPES
        beyond = next((s for s in scopes if s not in caller.permissions), None)
        if beyond is not None:
            raise GatewayError(Reason.PERMISSION_DENIED, f"A client may not be given {quote(beyond)}, which "
                               "this credential lacks.", param="scopes")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32) if request.confidential else None
        row = await store.create_client(
            self._pool, organization_id=caller.organization_id, name=validate_client_name(request.name),
            redirect_uris=validate_redirect_uris(list(request.redirect_uris)),
            confidential=request.confidential, scopes=scopes, actor=actor_of(caller),
            secret_hash=None if secret is None else hash_key(self._secret, secret))
        return row, secret

    async def clients(self, caller: auth_service_pb2.Principal, limit: int, after: str) -> Page:
        return await store.list_clients(self._pool, caller.organization_id, page_limit(limit),
                                        page_after(after))

    async def delete(self, caller: auth_service_pb2.Principal, ident: str) -> str:
        """Deletes a client of the caller's organization (idempotently) and revokes every key and
        access token it obtained; each process refuses them within 2 s."""
        canonical = key_id(ident)
        revoked = None if canonical is None else await store.delete_client(
            self._pool, caller.organization_id, canonical, actor_of(caller))
        if canonical is None or revoked is None:
            raise client_not_found(ident)
        for revoked_key in revoked.key_ids:
            await self._keys.announce(revoked_key, "")
        for session_id in revoked.session_ids:
            await self._people.end_session(session_id)
        return canonical

    async def _client(self, client_id: str) -> store.ClientRow | None:
        canonical = key_id(client_id) if client_id else None
        return None if canonical is None else await store.get_client(self._pool, canonical)

    # -- authorization -------------------------------------------------------------------------

    async def authorize(self, caller: auth_service_pb2.Principal,
                        request: oauth_service_pb2.AuthorizeRequest) -> str:
        """Where the user's browser goes: the redirect URI with a code, or with the error (RFC 6749
        §4.1.2.1). An unknown client or a redirect URI it did not register is an error answered
        here, never a redirect."""
        if not caller.user_id:
            raise GatewayError(Reason.PERMISSION_DENIED, "OAuth requests are approved by a signed-in user: "
                               "send the user's access token (POST /v1/auth/login), not an API key.")
        client = await self._client(request.client_id)
        if client is None or not (client.organization_id == caller.organization_id
                                  or await self._platform.is_platform(client.organization_id)):
            raise OAuthError(INVALID_REQUEST, f"Unknown client_id {quote(request.client_id)}.")
        if request.redirect_uri:
            if request.redirect_uri not in client.redirect_uris:
                raise OAuthError(INVALID_REQUEST, "redirect_uri must be one of the client's registered URIs, "
                                                  "exactly.")
            target = request.redirect_uri
        elif len(client.redirect_uris) == 1:
            target = client.redirect_uris[0]
        else:
            raise OAuthError(INVALID_REQUEST, "redirect_uri is required: the client registered several.")
        state = request.state if len(request.state) <= MAX_STATE_LENGTH else ""

        def back(**params: str) -> str:
            return with_query(target, {**params, "state": state})

        def refused(error: str, description: str) -> str:
            return back(error=error, error_description=description)

        if len(request.state) > MAX_STATE_LENGTH:
            return refused(INVALID_REQUEST, f"state may hold at most {MAX_STATE_LENGTH} characters.")
        if request.response_type != "code":
            return refused(UNSUPPORTED_RESPONSE_TYPE, "response_type must be 'code'.")
        if not request.code_challenge:
            return refused(INVALID_REQUEST, "PKCE is required: send code_challenge with "
                                            "code_challenge_method=S256.")
        if request.code_challenge_method != "S256":
            return refused(INVALID_REQUEST, "code_challenge_method must be S256 (plain is not supported).")
        if not valid_challenge(request.code_challenge):
            return refused(INVALID_REQUEST, "code_challenge must be the 43-character BASE64URL of a SHA-256.")
        try:
            requested = parse_scope(request.scope) or client.scopes
        except OAuthError as error:
            return refused(error.error, error.message)
        outside = next((s for s in requested if s not in client.scopes), None)
        if outside is not None:
            return refused(INVALID_SCOPE, f"The client may not ask for {quote(outside)}.")
        granted = tuple(s for s in requested if s in caller.permissions)
        if not granted:
            return refused(ACCESS_DENIED, "The user holds none of the requested permissions.")
        code = CODE_PREFIX + secrets.token_urlsafe(32)
        await store.insert_code(self._pool, code_hash=hash_key(self._secret, code), client=client,
                                user_id=caller.user_id, organization_id=caller.organization_id,
                                redirect_uri=request.redirect_uri, code_challenge=request.code_challenge,
                                scopes=granted, ttl=CODE_TTL)
        return back(code=code)

    # -- the token endpoint --------------------------------------------------------------------

    async def _authenticated(self, credentials: ClientCredentials) -> store.ClientRow:
        client = await self._client(credentials.client_id)
        if client is not None and client.confidential:
            given = credentials.secret or ""
            ok = client.secret_hash is not None and hmac.compare_digest(hash_key(self._secret, given),
                                                                         client.secret_hash)
        else:
            ok = client is not None and not credentials.secret
        if client is None or not ok:
            raise OAuthError(INVALID_CLIENT, "Client authentication failed.",
                             basic_challenge=credentials.basic)
        return client

    async def token(self, form: dict[str, str], authorization: str | None) -> dict[str, Any]:
        """The token endpoint's answer for a form (RFC 6749 §4.1.3, §4.4)."""
        client = await self._authenticated(client_credentials(authorization, form))
        grant = form.get("grant_type", "")
        if grant == "authorization_code":
            return await self._code_grant(client, form)
        if grant == "client_credentials":
            return await self._client_grant(client, form)
        if not grant:
            raise OAuthError(INVALID_REQUEST, "grant_type is required.")
        raise OAuthError(UNSUPPORTED_GRANT_TYPE, f"grant_type {quote(grant)} is not supported; use "
                                                 "authorization_code or client_credentials.")

    async def _code_grant(self, client: store.ClientRow, form: dict[str, str]) -> dict[str, Any]:
        code, verifier = form.get("code", ""), form.get("code_verifier", "")
        if not code:
            raise OAuthError(INVALID_REQUEST, "code is required.")
        if not verifier:
            raise OAuthError(INVALID_REQUEST, "code_verifier is required (PKCE).")
        redirect_uri = form.get("redirect_uri", "")

        def check(row: store.CodeRow) -> store.OAuthRefusal | None:
            if row.client_id != client.id:
                return store.OAuthRefusal(INVALID_GRANT, "The code was issued to another client.")
            if row.expired:
                return store.OAuthRefusal(INVALID_GRANT, "The authorization code has expired.")
            # The same redirect_uri as the authorization request, or none when it named none.
            if redirect_uri != row.redirect_uri and not (not row.redirect_uri
                                                         and redirect_uri == client.redirect_uris[0]):
                return store.OAuthRefusal(INVALID_GRANT,
                                          "redirect_uri differs from the authorization request's.")
            if not pkce_matches(verifier, row.code_challenge):
                return store.OAuthRefusal(INVALID_GRANT, "code_verifier does not match the code_challenge.")
            if row.user_role is None:
                return store.OAuthRefusal(INVALID_GRANT, "The user who approved this request is disabled.")
            return None

        plaintext = generate_key()

        def new_key(row: store.CodeRow) -> tuple[KeySettings, str, str]:
            settings = KeySettings(name=f"{client.name} (OAuth)"[:_KEY_NAME_LIMIT],
                                   role=row.user_role or "member", scopes=row.scopes)
            return settings, hash_key(self._secret, plaintext), key_prefix(plaintext)

        outcome = await store.exchange_code(self._pool, hash_key(self._secret, code), check, new_key,
                                            f"oauth_client:{client.id}")
        if outcome.reused_key_id is not None:
            await self._keys.announce(outcome.reused_key_id, "")
        if outcome.refusal is not None or outcome.key is None:
            refusal = outcome.refusal or store.OAuthRefusal(INVALID_GRANT, "Unknown authorization code.")
            raise OAuthError(refusal.error, refusal.description)
        # A negative cache entry for this HMAC anywhere would refuse the new key for seconds.
        await self._keys.announce(outcome.key.id, outcome.key.key_hash)
        return token_json({"access_token": plaintext, "scope": scope_string(outcome.key.settings.scopes),
                           "key_id": outcome.key.id})

    async def _client_grant(self, client: store.ClientRow, form: dict[str, str]) -> dict[str, Any]:
        if not client.confidential:
            raise OAuthError(UNAUTHORIZED_CLIENT, "Only a confidential client may use client_credentials.")
        requested = parse_scope(form.get("scope", "")) or client.scopes
        outside = next((s for s in requested if s not in client.scopes), None)
        if outside is not None:
            raise OAuthError(INVALID_SCOPE, f"The client may not ask for {quote(outside)}.")
        # Never more than an admin of the client's organization holds.
        platform = await self._platform.is_platform(client.organization_id)
        held = permissions_for("admin", platform=platform)
        granted = tuple(s for s in requested if s in held)
        session_id = await store.open_client_session(
            self._pool, client, granted, timedelta(seconds=ACCESS_TOKEN_TTL_S), f"oauth_client:{client.id}")
        role = "member" if all(p in ROLE_PERMISSIONS["member"] for p in granted) else "admin"
        now = int(self._clock())
        claims = {"sub": client.id, "client_id": client.id, "org": client.organization_id, "role": role,
                  "permissions": list(granted), "sid": session_id, "iat": now,
                  "exp": now + ACCESS_TOKEN_TTL_S, "jti": secrets.token_urlsafe(16)}
        token = await self._people.keyring.sign(claims)
        return token_json({"access_token": token, "expires_in": ACCESS_TOKEN_TTL_S,
                           "scope": scope_string(granted)})

    # -- revocation ----------------------------------------------------------------------------

    async def revoke(self, form: dict[str, str], authorization: str | None) -> None:
        """RFC 7009: ends a key or access token this client obtained; silently does nothing for a
        token that is unknown, already ended, or another client's."""
        client = await self._authenticated(client_credentials(authorization, form))
        token = form.get("token", "")
        if not token:
            raise OAuthError(INVALID_REQUEST, "token is required.")
        actor = f"oauth_client:{client.id}"
        if looks_like_jwt(token):
            claims = await self._people.keyring.verify(token)
            session_id = str(claims.get("sid", "")) if claims and claims.get("client_id") == client.id else ""
            if session_id and await store.client_session(self._pool, session_id, client.id):
                await self._people.end_session(session_id, reason="oauth_revoke")
                await store.audit_revocation(self._pool, client.organization_id, actor, session_id,
                                             "access_token")
            return
        found = await store.client_key(self._pool, hash_key(self._secret, token), client.id)
        if found is not None:
            key_id_, organization_id = found
            await self._keys.revoke_as(organization_id, key_id_, actor)
            await store.audit_revocation(self._pool, organization_id, actor, key_id_, "api_key")
