"""The auth gRPC servicers: thin translation between messages and authenticator.py/management.py.

AuthService is internal (other services call it to resolve keys). ApiKeyService is public
(`/v1/api-keys`): it authenticates its caller from the `authorization` metadata itself and admits
keys holding the permission each RPC declares (`read:api-keys`, `write:api-keys`; permissions.py).
"""

from __future__ import annotations

from typing import Any

from aggregator.auth.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
)
from services.auth.audit import AuditTrail, authorized
from services.auth.authenticator import Authenticator, missing_key
from services.auth.management import ApiKeyManager
from services.auth.permissions import READ_API_KEYS, WRITE_API_KEYS, requires
from services.auth.records import api_key_message
from services.auth.validation import (
    changes_from_update,
    decode_page_token,
    encode_page_token,
    grace_period,
    page_size,
    settings_from_create,
)
from services.core.rpc import rpc_method, send_headers


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """AuthService: resolves API keys for the other services."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    @rpc_method
    async def Authenticate(self, request: auth_service_pb2.AuthenticateRequest,
                           context: Any) -> auth_service_pb2.AuthenticateResponse:
        """The principal behind `api_key`; UNAUTHENTICATED when it is missing, unknown, revoked or expired."""
        if not request.api_key:
            raise missing_key()
        principal = await self._authenticator.authenticate_key(request.api_key)
        return auth_service_pb2.AuthenticateResponse(principal=principal)


class ApiKeyServicer(api_key_service_pb2_grpc.ApiKeyServiceServicer):
    """ApiKeyService: the `/v1/api-keys` endpoints, for admin keys of an organization."""

    def __init__(self, authenticator: Authenticator, manager: ApiKeyManager,
                 trail: AuditTrail | None = None) -> None:
        self._authenticator = authenticator
        self._manager = manager
        self._trail = trail

    async def _admin(self, context: Any) -> Any:
        await send_headers(context)
        # The permission the running RPC declares below; a refusal goes to the audit trail.
        return await authorized(self._authenticator, self._trail, context)

    @rpc_method
    @requires(WRITE_API_KEYS)
    async def CreateApiKey(self, request: api_key_service_pb2.CreateApiKeyRequest,
                           context: Any) -> api_key_pb2.ApiKey:
        """Creates a key; the answer holds its plaintext, once."""
        caller = await self._admin(context)
        row, plaintext = await self._manager.create(caller, settings_from_create(request),
                                                    request.organization_id)
        return api_key_message(row, plaintext)

    @rpc_method
    @requires(READ_API_KEYS)
    async def ListApiKeys(self, request: api_key_service_pb2.ListApiKeysRequest,
                          context: Any) -> api_key_service_pb2.ListApiKeysResponse:
        """The organization's live keys, newest first, without secrets."""
        caller = await self._admin(context)
        size, after = page_size(request.page_size), decode_page_token(request.page_token)
        rows, following = await self._manager.list(caller, size, after)
        return api_key_service_pb2.ListApiKeysResponse(
            object="list", data=[api_key_message(r) for r in rows],
            next_page_token=encode_page_token(following) if following is not None else "")

    @rpc_method
    @requires(READ_API_KEYS)
    async def GetApiKey(self, request: api_key_service_pb2.GetApiKeyRequest,
                        context: Any) -> api_key_pb2.ApiKey:
        """One key of the organization, without its secret."""
        caller = await self._admin(context)
        return api_key_message(await self._manager.get(caller, request.id))

    @rpc_method
    @requires(WRITE_API_KEYS)
    async def UpdateApiKey(self, request: api_key_service_pb2.UpdateApiKeyRequest,
                           context: Any) -> api_key_pb2.ApiKey:
        """Changes the settings the request carries, keeps the others (AIP-134 partial update);
        every process applies the change within 2 s."""
        caller = await self._admin(context)
        return api_key_message(await self._manager.update(caller, request.id, changes_from_update(request)))

    @rpc_method
    @requires(WRITE_API_KEYS)
    async def RotateApiKey(self, request: api_key_service_pb2.RotateApiKeyRequest,
                           context: Any) -> api_key_pb2.ApiKey:
        """A new secret for the key, answered once in `key`; the replaced one keeps working for
        the grace period (docs/reference.md §4)."""
        caller = await self._admin(context)
        row, plaintext = await self._manager.rotate(caller, request.id, grace_period(request))
        return api_key_message(row, plaintext)

    @rpc_method
    @requires(WRITE_API_KEYS)
    async def DeleteApiKey(self, request: api_key_service_pb2.DeleteApiKeyRequest,
                           context: Any) -> api_key_service_pb2.DeleteApiKeyResponse:
        """Revokes a key; every process refuses it within 2 s."""
        caller = await self._admin(context)
        ident = await self._manager.revoke(caller, request.id)
        return api_key_service_pb2.DeleteApiKeyResponse(id=ident, object="api_key", deleted=True)
