"""People signing in: password login, refresh, logout, "who am I", and the verification of their
access tokens wherever a key is accepted (docs/reference.md §4 "People").

Failed logins are counted in Redis per account and per client address, in fixed 15-minute windows
(`LoginThrottle`). The account counter is keyed by the email as typed, whether or not a user has
it, so a locked account and an unknown email answer alike and nothing tells which emails exist.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aggregator.auth.v1 import auth_service_pb2, session_service_pb2
from services.auth.jwt_keys import ACCESS_TOKEN_TTL_S, KeyRing
from services.auth.keys import hash_key
from services.auth.passwords import hash_password, verify_password
from services.auth.permissions import PlatformOrganization, permissions_for
from services.auth.sessions import LOGOUT, SessionStates, SessionStore, publish_revocation
from services.core.errors import GatewayError, Reason

log = logging.getLogger(__name__)
T = TypeVar("T", session_service_pb2.LoginResponse, session_service_pb2.RefreshResponse)
# Where sign-in events go for the audit trail: called with the keywords `action`, `actor`,
# `organization_id`, `target`, `details` (never a password, token or email), without waiting.
AuditHook = Callable[..., None]

ACCOUNT_LIMIT = 5  # failed logins per account per window
ADDRESS_LIMIT = 20  # failed logins per client address per window
WINDOW_S = 900  # 15 minutes
MAX_EMAIL_LENGTH = 320
MAX_PASSWORD_LENGTH = 1024
BAD_LOGIN = "Incorrect email or password."
BAD_REFRESH = "Invalid or expired refresh token."
REUSED_REFRESH = "This refresh token was already used; its session has been revoked. Sign in again."
ACCOUNT_LOCKED = "Too many failed sign-ins for this account. Try again later (see Retry-After)."
ADDRESS_LOCKED = "Too many failed sign-ins from this address. Try again later (see Retry-After)."


def bad_login() -> GatewayError:
    return GatewayError(Reason.INVALID_CREDENTIALS, BAD_LOGIN)


@functools.cache
def _decoy_hash() -> str:
    # Verified against when no user has the email, so both answers take an argon2id verification.
    return hash_password(secrets.token_urlsafe(16))


class LoginThrottle:
    """Counts failed logins in Redis and refuses (429 with Retry-After) past the limits."""

    def __init__(self, redis: aioredis.Redis, secret: bytes) -> None:
        self._redis = redis
        self._secret = secret

    def _keys(self, email: str, address: str) -> tuple[str, str]:
        # The email is keyed by its HMAC: no address in Redis in plain text.
        return (f"login:fail:account:{hash_key(self._secret, 'login:' + email)[:32]}",
                f"login:fail:address:{address}")

    async def check(self, email: str, address: str) -> None:
        account, place = self._keys(email, address)
        try:
            counts = await self._redis.mget(account, place)
            for key, count, limit, message in ((account, counts[0], ACCOUNT_LIMIT, ACCOUNT_LOCKED),
                                               (place, counts[1], ADDRESS_LIMIT, ADDRESS_LOCKED)):
                if count is not None and int(count) >= limit:
                    wait = max(1, int(await self._redis.ttl(key)))
                    raise GatewayError(Reason.RATE_LIMITED, message, retry_after=wait)
        except RedisError as exc:
            raise _unavailable(exc) from None

    async def failed(self, email: str, address: str) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key in self._keys(email, address):
                    pipe.incr(key)
                    pipe.expire(key, WINDOW_S, nx=True)
                await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from None

    async def succeeded(self, email: str, address: str) -> None:
        try:
            await self._redis.delete(self._keys(email, address)[0])
        except RedisError as exc:
            log.warning("could not reset the failed-login counter: %s", type(exc).__name__)


def _unavailable(exc: Exception) -> GatewayError:
    log.warning("login throttle unavailable: %s", type(exc).__name__)
    return GatewayError(Reason.UNAVAILABLE, "Sign-in is temporarily unavailable. Please retry.")


def principal_of(claims: dict[str, Any]) -> auth_service_pb2.Principal:
    """The Principal an access token stands for: the same shape a key's has, with the user (or,
    for the client-credentials grant, the OAuth client: services/auth/oauth.py) and session
    instead of a key id."""
    principal = auth_service_pb2.Principal(organization_id=str(claims["org"]), role=str(claims["role"]),
                                           permissions=[str(p) for p in claims.get("permissions", ())],
                                           session_id=str(claims["sid"]))
    if "client_id" in claims:
        principal.oauth_client_id = str(claims["client_id"])
    else:
        principal.user_id = str(claims["sub"])
    return principal


class People:
    """The sign-in flows of one process."""

    def __init__(self, pool: asyncpg.Pool, keyring: KeyRing, store: SessionStore, states: SessionStates,
                 throttle: LoginThrottle, platform: PlatformOrganization, nc: Any | None = None, *,
                 clock: Callable[[], float] = time.time, audit: AuditHook | None = None) -> None:
        self._pool = pool
        self._audit = audit
        self.keyring = keyring
        self.store = store
        self.states = states
        self._throttle = throttle
        self._platform = platform
        self._nc = nc
        self._clock = clock

    async def _user(self, column: str, value: str) -> Any:
        return await self._pool.fetchrow(
            "SELECT id, organization_id, email, name, role, password_hash, disabled_at FROM users "
            f"WHERE {column} = $1", value)

    async def _tokens(self, user: Any, session_id: str, refresh_token: str, answer: type[T]) -> T:
        organization_id = str(user["organization_id"])
        platform = user["role"] == "admin" and await self._platform.is_platform(organization_id)
        now = int(self._clock())
        claims = {"sub": str(user["id"]), "org": organization_id, "role": user["role"],
                  "permissions": list(permissions_for(user["role"], platform=platform)), "sid": session_id,
                  "iat": now, "exp": now + ACCESS_TOKEN_TTL_S, "jti": secrets.token_urlsafe(16)}
        return answer(access_token=await self.keyring.sign(claims), token_type="bearer",
                      expires_in=ACCESS_TOKEN_TTL_S, refresh_token=refresh_token)

    async def login(self, email: str, password: str, address: str) -> session_service_pb2.LoginResponse:
        """Tokens for a user whose argon2id password hash matches; INVALID_CREDENTIALS otherwise,
        the same for an unknown email; RATE_LIMITED past the failure limits."""
        email = email.strip().lower()
        if not email or len(email) > MAX_EMAIL_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
            raise bad_login()
        await self._throttle.check(email, address)
        user = await self._user("email", email)
        usable = user is not None and user["password_hash"] and user["disabled_at"] is None
        stored = user["password_hash"] if usable else _decoy_hash()
        # argon2id takes tens of milliseconds of CPU: off the event loop.
        matches = await asyncio.to_thread(verify_password, stored, password)
        if not (usable and matches):
            await self._throttle.failed(email, address)
            self._record("auth.login_failed", "anonymous", user)
            raise bad_login()
        await self._throttle.succeeded(email, address)
        session_id, refresh_token = await self.store.open(str(user["id"]), str(user["organization_id"]))
        self._record("auth.login", f"user:{user['id']}", user, session_id)
        return await self._tokens(user, session_id, refresh_token, session_service_pb2.LoginResponse)

    def _record(self, action: str, actor: str, user: Any, session_id: str | None = None) -> None:
        if self._audit is None:
            return
        try:
            self._audit(action=action, actor=actor,
                        organization_id=None if user is None else str(user["organization_id"]),
                        target=None if user is None else str(user["id"]),
                        details={"session_id": session_id} if session_id else None)
        except Exception:  # noqa: BLE001 - the audit trail must never fail a sign-in
            log.exception("could not record %s", action)

    async def _revoke(self, session_id: str, reason: str) -> None:
        if self._audit is not None:
            owner = await self.store.owner(session_id)
            self._record(f"auth.{reason}", f"session:{session_id}", owner, session_id)
        await self.end_session(session_id, reason)

    async def end_session(self, session_id: str, reason: str = LOGOUT) -> None:
        """Revokes a session; every process refuses its access tokens within 2 s (NATS)."""
        await self.store.revoke(session_id, reason)
        self.states.mark_revoked(session_id)
        await publish_revocation(self._nc, session_id)

    async def refresh(self, refresh_token: str) -> session_service_pb2.RefreshResponse:
        """New tokens for a refresh token, which is spent; a spent one revokes its session."""
        outcome = await self.store.exchange(refresh_token)
        if outcome.reused:
            sid = outcome.session_id
            if self._audit is not None:
                self._record("auth.refresh_token_reuse", f"session:{sid}", await self.store.owner(sid), sid)
            self.states.mark_revoked(outcome.session_id)
            await publish_revocation(self._nc, outcome.session_id)
            raise GatewayError(Reason.INVALID_CREDENTIALS, REUSED_REFRESH)
        if not outcome.session_id:
            raise GatewayError(Reason.INVALID_CREDENTIALS, BAD_REFRESH)
        user = await self._user("id", outcome.user_id)
        if user is None or user["disabled_at"] is not None:
            await self._revoke(outcome.session_id, LOGOUT)
            raise GatewayError(Reason.INVALID_CREDENTIALS, BAD_REFRESH)
        return await self._tokens(user, outcome.session_id, outcome.refresh_token,
                                  session_service_pb2.RefreshResponse)

    async def logout(self, refresh_token: str, bearer: str | None) -> None:
        """Ends the session of `refresh_token`, else of the access token `bearer`."""
        if refresh_token:
            session_id = await self.store.session_of(refresh_token)
            if session_id is None:
                raise GatewayError(Reason.INVALID_CREDENTIALS, BAD_REFRESH)
        else:
            claims = await self.keyring.verify(bearer) if bearer else None
            if claims is None:
                raise GatewayError(Reason.INVALID_CREDENTIALS, "Send the session's refresh_token, or its "
                                   "access token as the Bearer credential.")
            session_id = str(claims["sid"])
        await self._revoke(session_id, LOGOUT)

    async def authenticate(self, token: str) -> auth_service_pb2.Principal | None:
        """The principal of a valid access token whose session is not revoked; None otherwise.
        Warm, this is one signature check and two dictionary lookups: no database."""
        claims = await self.keyring.verify(token)
        if claims is None or await self.states.is_revoked(str(claims["sid"])):
            return None
        return principal_of(claims)

    async def me(self, principal: auth_service_pb2.Principal) -> session_service_pb2.GetMeResponse:
        """The caller's user (for an access token), organization and permissions."""
        answer = session_service_pb2.GetMeResponse(permissions=principal.permissions)
        if principal.user_id:
            user = await self._user("id", principal.user_id)
            if user is not None:
                answer.user.CopyFrom(session_service_pb2.User(
                    id=str(user["id"]), email=user["email"], name=user["name"], role=user["role"],
                    organization_id=str(user["organization_id"])))
        name = await self._pool.fetchval("SELECT name FROM organizations WHERE id = $1::uuid",
                                         principal.organization_id)
        answer.organization.CopyFrom(session_service_pb2.Organization(id=principal.organization_id,
                                                                      name=name or ""))
        return answer

    async def jwks(self) -> session_service_pb2.GetJwksResponse:
        keys = await self.keyring.published()
        return session_service_pb2.GetJwksResponse(keys=[session_service_pb2.Jwk(**k.jwk()) for k in keys])

    async def close(self) -> None:
        await self.states.close()
