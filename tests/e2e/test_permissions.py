"""Permissions through Envoy, in both topologies (docs/reference.md §4 "Permissions"): a member key
uses models but may not manage keys, a key narrowed by scopes holds only what they name, and the
denial is 403 `permission_denied` naming the permission, over HTTP and native gRPC alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import openai
import pytest

from aggregator.auth.v1 import api_key_service_pb2, api_key_service_pb2_grpc
from aggregator.openai.v1 import chat_pb2, inference_service_pb2_grpc
from services.core.errors import Reason, from_rpc_error
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def new_key(http: httpx.AsyncClient, **fields: Any) -> str:
    created = await http.post("/v1/api-keys", json={"name": "permissions", **fields})
    assert created.status_code == 200, created.text
    return str(created.json()["key"])


@pytest.fixture
async def member(gateway: Gateway, http: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    key = await new_key(http, role="member")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        yield client


def assert_denied(response: httpx.Response, permission: str) -> None:
    assert response.status_code == 403, response.text
    assert response.json() == {"error": {
        "message": f"This credential lacks the permission '{permission}'.", "type": "permission_error",
        "param": None, "code": "permission_denied"}}


async def test_a_member_may_not_create_or_list_keys(member: httpx.AsyncClient) -> None:
    assert_denied(await member.post("/v1/api-keys", json={"name": "mine"}), "write:api-keys")
    assert_denied(await member.get("/v1/api-keys"), "read:api-keys")
    assert_denied(await member.delete("/v1/api-keys/00000000-0000-0000-0000-000000000000"), "write:api-keys")


async def test_a_member_still_uses_models(gateway: Gateway, member: httpx.AsyncClient) -> None:
    answer = await member.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "chat.completion"
    assert (await member.get("/v1/models")).status_code == 200
    key = member.headers["authorization"].removeprefix("Bearer ")
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0) as sdk:
        streamed = [chunk async for chunk in await sdk.chat.completions.create(**CHAT, stream=True)]
    assert streamed


async def test_an_admin_key_narrowed_by_scopes(gateway: Gateway, http: httpx.AsyncClient) -> None:
    key = await new_key(http, role="admin", scopes=["inference"])
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                                 headers={"authorization": f"Bearer {key}"}) as narrowed:
        assert (await narrowed.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert_denied(await narrowed.get("/v1/api-keys"), "read:api-keys")
        assert_denied(await narrowed.post("/v1/api-keys", json={"name": "x"}), "write:api-keys")
        assert_denied(await narrowed.get("/v1/models"), "read:models")


async def test_the_bootstrap_admin_manages_keys(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/api-keys")).status_code == 200


async def test_public_metrics_need_the_platform(http: httpx.AsyncClient, member: httpx.AsyncClient) -> None:
    assert_denied(await member.get("/metrics"), "admin:platform")
    assert (await http.get("/metrics")).status_code == 200  # the bootstrap admin: default organization


async def test_the_ops_endpoints_need_no_key(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/v1/api-keys")).status_code == 401  # a key is needed, not a permission


async def test_native_grpc_denies_and_allows_alike(gateway: Gateway, member: httpx.AsyncClient) -> None:
    metadata = (("authorization", member.headers["authorization"]),)
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        keys = api_key_service_pb2_grpc.ApiKeyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await keys.CreateApiKey(api_key_service_pb2.CreateApiKeyRequest(name="x"), metadata=metadata)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        error = from_rpc_error(caught.value)
        assert error.reason is Reason.PERMISSION_DENIED and "'write:api-keys'" in error.message
        inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = chat_pb2.ChatCompletionRequest(model="gpt-4o-mini",
                                                 messages=[chat_pb2.ChatMessage(role="user")])
        request.messages[0].content.string_value = "hi"
        answer = await inference.CreateChatCompletion(request, metadata=metadata)
        assert answer.choices
