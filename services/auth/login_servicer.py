"""SessionService: the `/v1/auth/*` endpoints and `/.well-known/jwks.json` (docs/reference.md §4
"People"), thin translation to login.py.

Login, refresh, logout and the JWK Set are public (they are how a credential is obtained or
ended); `GET /v1/auth/me` needs an authenticated caller holding `read:models`, which every role has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from aggregator.auth.v1 import session_service_pb2, session_service_pb2_grpc
from services.auth.assembly import platform_organization
from services.auth.audit_repository import client_ip
from services.auth.authenticator import Authenticator
from services.auth.jwt_keys import KeyRing
from services.auth.keys import parse_bearer
from services.auth.login import AuditHook, LoginThrottle, People
from services.auth.permissions import PUBLIC, READ_MODELS, check, requires
from services.auth.sessions import SessionStates, SessionStore
from services.core.rpc import metadata_value, rpc_method, send_headers
from services.core.server import Registration

UNKNOWN_ADDRESS = "unknown"


def client_address(context: Any) -> str:
    """The client's address, as the audit trail takes it: the last `x-forwarded-for` entry, the
    one Envoy appended itself (`use_remote_address`; entries before it are the client's own say),
    else the gRPC peer."""
    peer = getattr(context, "peer", None)
    return client_ip(metadata_value(context, "x-forwarded-for"), peer() if callable(peer) else None) \
        or UNKNOWN_ADDRESS


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    """SessionService: people's sign-in."""

    def __init__(self, people: People, authenticator: Authenticator) -> None:
        self._people = people
        self._authenticator = authenticator

    @rpc_method
    @requires(PUBLIC)
    async def Login(self, request: session_service_pb2.LoginRequest,
                    context: Any) -> session_service_pb2.LoginResponse:
        """Tokens for a user's email and password."""
        await send_headers(context)
        return await self._people.login(request.email, request.password, client_address(context))

    @rpc_method
    @requires(PUBLIC)
    async def Refresh(self, request: session_service_pb2.RefreshRequest,
                      context: Any) -> session_service_pb2.RefreshResponse:
        """New tokens for a refresh token, which is spent."""
        await send_headers(context)
        return await self._people.refresh(request.refresh_token)

    @rpc_method
    @requires(PUBLIC)
    async def Logout(self, request: session_service_pb2.LogoutRequest,
                     context: Any) -> session_service_pb2.LogoutResponse:
        """Ends the session; every process refuses its access tokens within 2 s."""
        await send_headers(context)
        bearer = parse_bearer(metadata_value(context, "authorization"))
        await self._people.logout(request.refresh_token, bearer)
        return session_service_pb2.LogoutResponse(revoked=True)

    @rpc_method
    @requires(READ_MODELS)
    async def GetMe(self, request: session_service_pb2.GetMeRequest,
                    context: Any) -> session_service_pb2.GetMeResponse:
        """The caller (an access token or an API key)."""
        await send_headers(context)
        principal = await self._authenticator.authenticate(metadata_value(context, "authorization"))
        check(principal)
        return await self._people.me(principal)

    @rpc_method
    @requires(PUBLIC)
    async def GetJwks(self, request: session_service_pb2.GetJwksRequest,
                      context: Any) -> session_service_pb2.GetJwksResponse:
        """The public keys that verify access tokens."""
        return await self._people.jwks()


@dataclass(slots=True)
class PeopleComponents:
    """The sign-in half of the auth service in one process."""

    people: People
    servicer: SessionServicer

    def registration(self) -> Registration:
        return Registration(session_service_pb2_grpc.add_SessionServiceServicer_to_server, self.servicer,
                            session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name)

    def forget(self) -> None:
        """After a NATS reconnect: revocations may have been missed, so ask PostgreSQL again."""
        self.people.states.clear()

    async def close(self) -> None:
        await self.people.close()


async def build_people(pool: asyncpg.Pool, secret: bytes, redis: aioredis.Redis, authenticator: Authenticator,
                       nc: Any | None = None, *, session_ttl_s: float = 60.0,
                       audit: AuditHook | None = None) -> PeopleComponents:
    """Wires sign-in and makes `authenticator` accept access tokens; subscribes to session
    revocations when `nc` is given (without NATS, other processes see a logout within
    `session_ttl_s`). `audit` receives sign-in, failed sign-in and logout events (e.g. the audit
    trail's `record_soon`)."""
    store = SessionStore(pool, secret)
    states = SessionStates(store, ttl_s=session_ttl_s)
    if nc is not None:
        await states.subscribe(nc)
    people = People(pool, KeyRing(pool, secret), store, states, LoginThrottle(redis, secret),
                    platform_organization(pool), nc, audit=audit)
    authenticator.accept_access_tokens(people.authenticate)
    return PeopleComponents(people=people, servicer=SessionServicer(people, authenticator))
