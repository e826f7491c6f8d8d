"""OAuthService: `/v1/oauth/*` (docs/reference.md §4 "OAuth 2.0"), thin translation to oauth.py.

Client registration needs `write:oauth-clients` (listing `read:oauth-clients`); approving an
authorization request needs a signed-in user's access token holding `read:models`, which every
role has; the token and revocation endpoints are public, since the client authenticates itself
in the request. Over HTTP, Authorize answers 302 with a `Location`: the service asks for it with
the `x-http-status` response header, which the edge's Lua shaper applies (docs/edge.md).
"""

from __future__ import annotations

from typing import Any

import orjson
from google.api import httpbody_pb2

from aggregator.auth.v1 import oauth_service_pb2, oauth_service_pb2_grpc
from services.auth.audit import AuditTrail, authorized, bind_origin
from services.auth.authenticator import Authenticator
from services.auth.oauth import OAuthProvider, client_message
from services.auth.oauth_protocol import NO_STORE, parse_form
from services.auth.permissions import PUBLIC, READ_MODELS, READ_OAUTH_CLIENTS, WRITE_OAUTH_CLIENTS, requires
from services.core.errors import HTTP_STATUS_KEY
from services.core.rpc import metadata_value, rpc_method, send_headers
from services.core.server import Registration


def _json_body(values: dict[str, Any]) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="application/json", data=orjson.dumps(values))


class OAuthServicer(oauth_service_pb2_grpc.OAuthServiceServicer):
    """OAuthService: clients, authorization, tokens and revocation."""

    def __init__(self, provider: OAuthProvider, authenticator: Authenticator,
                 trail: AuditTrail | None = None) -> None:
        self._provider = provider
        self._authenticator = authenticator
        self._trail = trail

    async def _caller(self, context: Any, *headers: tuple[str, str]) -> Any:
        await send_headers(context, *headers)
        return await authorized(self._authenticator, self._trail, context)

    @rpc_method
    @requires(WRITE_OAUTH_CLIENTS)
    async def CreateOAuthClient(self, request: oauth_service_pb2.CreateOAuthClientRequest,
                                context: Any) -> oauth_service_pb2.OAuthClient:
        """Registers a client; a confidential one's secret is answered once."""
        caller = await self._caller(context, *NO_STORE)
        row, secret = await self._provider.register(caller, request)
        return client_message(row, secret)

    @rpc_method
    @requires(READ_OAUTH_CLIENTS)
    async def ListOAuthClients(self, request: oauth_service_pb2.ListOAuthClientsRequest,
                               context: Any) -> oauth_service_pb2.ListOAuthClientsResponse:
        """The organization's clients, oldest first."""
        caller = await self._caller(context)
        page = await self._provider.clients(caller, request.limit, request.after)
        return oauth_service_pb2.ListOAuthClientsResponse(
            object="list", data=[client_message(row) for row in page.rows], has_more=page.has_more)

    @rpc_method
    @requires(WRITE_OAUTH_CLIENTS)
    async def DeleteOAuthClient(self, request: oauth_service_pb2.DeleteOAuthClientRequest,
                                context: Any) -> oauth_service_pb2.DeleteOAuthClientResponse:
        """Deletes a client and revokes what it obtained."""
        caller = await self._caller(context)
        ident = await self._provider.delete(caller, request.id)
        return oauth_service_pb2.DeleteOAuthClientResponse(id=ident, object="oauth_client", deleted=True)

    @rpc_method
    @requires(READ_MODELS)
    async def Authorize(self, request: oauth_service_pb2.AuthorizeRequest,
                        context: Any) -> oauth_service_pb2.AuthorizeResponse:
        """A signed-in user approves a client: a 302 to its redirect URI with a code (or an error)."""
        caller = await authorized(self._authenticator, self._trail, context)
        target = await self._provider.authorize(caller, request)
        await send_headers(context, (HTTP_STATUS_KEY, "302"), ("location", target), *NO_STORE)
        return oauth_service_pb2.AuthorizeResponse(redirect_to=target)

    @rpc_method
    @requires(PUBLIC)
    async def Token(self, request: httpbody_pb2.HttpBody, context: Any) -> httpbody_pb2.HttpBody:
        """The token endpoint: a form in, RFC 6749 JSON out."""
        await send_headers(context, *NO_STORE)
        bind_origin(context)
        form = parse_form(request.content_type, request.data)
        return _json_body(await self._provider.token(form, metadata_value(context, "authorization")))

    @rpc_method
    @requires(PUBLIC)
    async def Revoke(self, request: httpbody_pb2.HttpBody, context: Any) -> httpbody_pb2.HttpBody:
        """RFC 7009 revocation: 200 whether or not the token was live."""
        await send_headers(context, *NO_STORE)
        bind_origin(context)
        form = parse_form(request.content_type, request.data)
        await self._provider.revoke(form, metadata_value(context, "authorization"))
        return _json_body({})


def oauth_registration(provider: OAuthProvider, authenticator: Authenticator,
                       trail: AuditTrail | None = None) -> Registration:
    return Registration(oauth_service_pb2_grpc.add_OAuthServiceServicer_to_server,
                        OAuthServicer(provider, authenticator, trail),
                        oauth_service_pb2.DESCRIPTOR.services_by_name["OAuthService"].full_name)
