"""OrganizationService and UserService: `/v1/organizations` and `/v1/users` (docs/reference.md §4
"Organizations and users"); thin translation between messages and tenancy.py.

Each servicer authenticates its caller from the `authorization` metadata and admits keys holding
the permission each RPC declares (services/auth/permissions.py): `admin:platform` to create and
list organizations, `read:users`/`write:users` (admins) for an organization itself and its users.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from google.protobuf import json_format, timestamp_pb2

from aggregator.tenancy.v1 import (
    organization_pb2,
    organization_service_pb2,
    organization_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)
from services.auth.audit import AuditTrail, authorized
from services.auth.authenticator import Authenticator
from services.auth.permissions import ADMIN_PLATFORM, READ_USERS, WRITE_USERS, requires
from services.auth.tenancy import TenancyManager
from services.auth.tenancy_repository import OrganizationRow, UserRow
from services.core.rpc import rpc_method, send_headers
from services.core.server import Registration


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def organization_message(row: OrganizationRow) -> organization_pb2.Organization:
    message = organization_pb2.Organization(id=row.id, object="organization", name=row.name,
                                         created_at=_timestamp(row.created_at),
                                         updated_at=_timestamp(row.updated_at),
                                         store_prompts=row.store_prompts)
    if row.provider:
        message.provider.update(row.provider)
    return message


def user_message(row: UserRow) -> user_pb2.User:
    """A user as answered: no password field exists to fill."""
    return user_pb2.User(id=row.id, object="user", organization_id=row.organization_id, email=row.email,
                         name=row.name, role=row.role, created_at=_timestamp(row.created_at),
                         updated_at=_timestamp(row.updated_at))


class _Authenticated:
    """Authenticates the caller and checks the permission the running RPC declares."""

    def __init__(self, authenticator: Authenticator, manager: TenancyManager,
                 trail: AuditTrail | None = None) -> None:
        self._authenticator = authenticator
        self._manager = manager
        self._trail = trail

    async def _caller(self, context: Any) -> Any:
        await send_headers(context)  # the request id, as a response header
        # The permission the running RPC declares; a refusal goes to the audit trail.
        return await authorized(self._authenticator, self._trail, context)


class OrganizationServicer(_Authenticated, organization_service_pb2_grpc.OrganizationServiceServicer):
    """OrganizationService: `/v1/organizations`."""

    @rpc_method
    @requires(ADMIN_PLATFORM)
    async def CreateOrganization(self, request: organization_service_pb2.CreateOrganizationRequest,
                                 context: Any) -> organization_pb2.Organization:
        """Creates an organization (platform admins)."""
        caller = await self._caller(context)
        return organization_message(await self._manager.create_organization(caller, request.name))

    @rpc_method
    @requires(ADMIN_PLATFORM)
    async def ListOrganizations(self, request: organization_service_pb2.ListOrganizationsRequest,
                                context: Any) -> organization_service_pb2.ListOrganizationsResponse:
        """Every organization, oldest first (platform admins)."""
        caller = await self._caller(context)
        page = await self._manager.list_organizations(caller, request.limit, request.after)
        return organization_service_pb2.ListOrganizationsResponse(
            object="list", data=[organization_message(r) for r in page.rows], has_more=page.has_more)

    @rpc_method
    @requires(READ_USERS)
    async def GetOrganization(self, request: organization_service_pb2.GetOrganizationRequest,
                              context: Any) -> organization_pb2.Organization:
        """The caller's organization (any, for a platform admin)."""
        caller = await self._caller(context)
        return organization_message(await self._manager.get_organization(caller, request.id))

    @rpc_method
    @requires(WRITE_USERS)
    async def UpdateOrganization(self, request: organization_service_pb2.UpdateOrganizationRequest,
                                 context: Any) -> organization_pb2.Organization:
        """Renames the caller's organization (any, for a platform admin), or opts it in or out of
        keeping request and response bodies (`store_prompts`)."""
        caller = await self._caller(context)
        name = request.name if request.HasField("name") else None
        store_prompts = request.store_prompts if request.HasField("store_prompts") else None
        provider = json_format.MessageToDict(request.provider) if request.HasField("provider") else None
        return organization_message(await self._manager.update_organization(caller, request.id, name,
                                                                            store_prompts, provider))


class UserServicer(_Authenticated, user_service_pb2_grpc.UserServiceServicer):
    """UserService: `/v1/users`."""

    @rpc_method
    @requires(WRITE_USERS)
    async def CreateUser(self, request: user_service_pb2.CreateUserRequest, context: Any) -> user_pb2.User:
        """Creates a user of the caller's organization (or of `organization_id`, for a platform admin)."""
        caller = await self._caller(context)
        return user_message(await self._manager.create_user(
            caller, email=request.email, name=request.name, role=request.role, secret=request.password,
            organization_id=request.organization_id))

    @rpc_method
    @requires(READ_USERS)
    async def ListUsers(self, request: user_service_pb2.ListUsersRequest,
                        context: Any) -> user_service_pb2.ListUsersResponse:
        """The organization's users, oldest first."""
        caller = await self._caller(context)
        page = await self._manager.list_users(caller, request.limit, request.after, request.organization_id)
        return user_service_pb2.ListUsersResponse(object="list", data=[user_message(r) for r in page.rows],
                                                  has_more=page.has_more)

    @rpc_method
    @requires(READ_USERS)
    async def GetUser(self, request: user_service_pb2.GetUserRequest, context: Any) -> user_pb2.User:
        """One user of the organization."""
        caller = await self._caller(context)
        return user_message(await self._manager.get_user(caller, request.id))

    @rpc_method
    @requires(WRITE_USERS)
    async def UpdateUser(self, request: user_service_pb2.UpdateUserRequest, context: Any) -> user_pb2.User:
        """Changes the fields the request carries."""
        caller = await self._caller(context)
        fields = {f: getattr(request, f) for f in ("email", "name", "role", "password")
                  if request.HasField(f)}
        return user_message(await self._manager.update_user(caller, request.id, fields))

    @rpc_method
    @requires(WRITE_USERS)
    async def DeleteUser(self, request: user_service_pb2.DeleteUserRequest,
                         context: Any) -> user_service_pb2.DeleteUserResponse:
        """Deletes a user of the organization."""
        caller = await self._caller(context)
        ident = await self._manager.delete_user(caller, request.id)
        return user_service_pb2.DeleteUserResponse(id=ident, object="user", deleted=True)


def tenancy_registrations(pool: asyncpg.Pool, authenticator: Authenticator,
                          trail: AuditTrail | None = None, nc: Any = None) -> list[Registration]:
    """Both servicers, for services.core.server.GrpcServer (or an in-process channel); `trail`
    records permission denials (services/auth/audit.py); `nc` announces ended sessions."""
    manager = TenancyManager(pool, nc)
    return [
        Registration(organization_service_pb2_grpc.add_OrganizationServiceServicer_to_server,
                     OrganizationServicer(authenticator, manager, trail),
                     organization_service_pb2.DESCRIPTOR.services_by_name["OrganizationService"].full_name),
        Registration(user_service_pb2_grpc.add_UserServiceServicer_to_server,
                     UserServicer(authenticator, manager, trail),
                     user_service_pb2.DESCRIPTOR.services_by_name["UserService"].full_name),
    ]
