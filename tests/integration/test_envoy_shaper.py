"""Lua off the success path (services/runtime/envoy_shaper.py), with a real Envoy in front of a
grpc.aio server in this process.

A plain success must reach HTTP/1.1 and HTTP/2 clients without gRPC plumbing in its headers or
trailers and without the Lua shaper ever running (Envoy's own `lua.executions` counter says so);
an error, or a success asking for another status (OAuth's 302), still gets it; native gRPC never does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import orjson
import pytest
import pytest_asyncio
from google.api import httpbody_pb2

from aggregator.openai.v1 import chat_pb2, openai_service_pb2, openai_service_pb2_grpc
from services.core.errors import HTTP_STATUS_KEY, GatewayError, Reason
from services.core.rpc import rpc_method
from tests.support.envoy import EnvoyEdge, envoy_in_front_of, h2c_post

SSE = (b'data: {"n":1}\n\n', b"data: [DONE]\n\n")


class Service(openai_service_pb2_grpc.OpenAIServiceServicer):
    """Answers by `model`: a JSON body, an SSE stream, a redirect, or a failure."""

    @rpc_method
    async def CreateChatCompletion(self, request: Any, context: Any) -> AsyncIterator[httpbody_pb2.HttpBody]:
        if request.model == "json":
            yield httpbody_pb2.HttpBody(content_type="application/json", data=b'{"object":"chat.completion"}')
        elif request.model == "sse":
            for chunk in SSE:
                yield httpbody_pb2.HttpBody(content_type="text/event-stream", data=chunk)
        elif request.model == "redirect":
            # What OAuth's authorize does (services/auth/oauth_servicer.py).
            await context.send_initial_metadata(((HTTP_STATUS_KEY, "302"), ("location", "https://x.test/cb")))
            yield httpbody_pb2.HttpBody(content_type="text/html", data=b"")
        else:
            raise GatewayError(Reason.RATE_LIMITED, "Rate limit reached for requests.", retry_after=7)

    @rpc_method
    async def ListModels(self, request: Any, context: Any) -> openai_service_pb2.ListModelsResponse:
        return openai_service_pb2.ListModelsResponse(object="list")


@pytest_asyncio.fixture(scope="module")
async def grpc_port() -> AsyncIterator[int]:
    server = grpc.aio.server()
    openai_service_pb2_grpc.add_OpenAIServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(grace=None)


@pytest.fixture(scope="module")
def edge(grpc_port: int) -> Any:
    with envoy_in_front_of(grpc_port) as running:
        yield running


async def counter(edge: EnvoyEdge, name: str) -> int:
    """One of Envoy's counters, read from its admin port (counters there are live, not flushed)."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{edge.admin_port}/stats",
                                    params={"filter": f"^{name}$", "format": "json"})
    stats = response.json()["stats"]
    return int(stats[0]["value"]) if stats else 0


def assert_no_plumbing(headers: Any) -> None:
    for key in headers:
        assert not key.lower().startswith(("grpc-", "x-envoy-", "x-openai-", "x-http-")), key


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


async def h2(edge: EnvoyEdge, model: str) -> tuple[dict[str, str], bytes, dict[str, str]]:
    async with asyncio.timeout(10):
        return await h2c_post(edge.http_port, "/v1/chat/completions", chat(model))


async def test_plain_successes_never_run_lua_and_carry_no_plumbing(edge: EnvoyEdge) -> None:
    before = await counter(edge, "http.edge.lua.executions")
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http1:
        for model, body in (("json", b'{"object":"chat.completion"}'), ("sse", b"".join(SSE))):
            response = await http1.post("/v1/chat/completions", content=chat(model),
                                        headers={"content-type": "application/json"})
            assert (response.status_code, response.content) == (200, body)
            assert_no_plumbing(response.headers)
        listed = await http1.get("/v1/models")
        assert listed.status_code == 200 and listed.json()["object"] == "list"
        assert_no_plumbing(listed.headers)
    for model in ("json", "sse"):
        headers, body, trailers = await h2(edge, model)
        assert headers[":status"] == "200" and body
        # gRPC's grpc-status and grpc-message trailers would reach an HTTP/2 client as trailers.
        assert_no_plumbing(headers)
        assert_no_plumbing(trailers)
    assert await counter(edge, "http.edge.lua.executions") == before


async def test_errors_still_run_the_shaper_for_http11_and_http2(edge: EnvoyEdge) -> None:
    before = await counter(edge, "http.edge.lua.executions")
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http1:
        response = await http1.post("/v1/chat/completions", content=chat("fail"),
                                    headers={"content-type": "application/json"})
    headers, body, trailers = await h2(edge, "fail")
    for status, seen, text in ((response.status_code, response.headers, response.content),
                               (int(headers[":status"]), headers, body)):
        assert status == 429 and seen["retry-after"] == "7"
        assert orjson.loads(text)["error"]["code"] == "rate_limit_exceeded"
        assert_no_plumbing(seen)
    assert_no_plumbing(trailers)
    assert await counter(edge, "http.edge.lua.executions") == before + 2


async def test_a_success_asking_for_302_gets_it_without_plumbing(edge: EnvoyEdge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http1:
        response = await http1.post("/v1/chat/completions", content=chat("redirect"),
                                    headers={"content-type": "application/json"})
    assert response.status_code == 302 and response.headers["location"] == "https://x.test/cb"
    assert_no_plumbing(response.headers)
    headers, _, trailers = await h2(edge, "redirect")
    assert headers[":status"] == "302" and headers["location"] == "https://x.test/cb"
    assert_no_plumbing(headers)
    assert_no_plumbing(trailers)


async def test_native_grpc_failure_keeps_its_metadata_and_never_meets_lua(edge: EnvoyEdge) -> None:
    before = await counter(edge, "http.edge.lua.executions")
    async with grpc.aio.insecure_channel(edge.grpc_target) as channel:
        stub = openai_service_pb2_grpc.OpenAIServiceStub(channel)
        call = stub.CreateChatCompletion(chat_pb2.ChatCompletionRequest(model="fail"))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _ in call:
                pass
    trailers = dict(failure.value.trailing_metadata() or ())
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers[HTTP_STATUS_KEY] == "429" and "x-openai-error" in trailers
    assert await counter(edge, "http.edge.lua.executions") == before


async def test_envoy_replies_to_native_grpc_stay_grpc_without_lua(edge: EnvoyEdge) -> None:
    # Internal services are refused on the public listener (a direct 404 route); local_reply_config
    # tells the native gRPC request from a transcoded one by CEL now, not by Lua's metadata.
    async with grpc.aio.insecure_channel(edge.grpc_target) as channel:
        call = channel.unary_unary("/aggregator.auth.v1.AuthService/Authenticate",
                                   request_serializer=lambda m: m, response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call(b"")
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert failure.value.details() == "The request could not be processed."
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http1:
        response = await http1.post("/v1/nowhere", content=b"{}",
                                    headers={"content-type": "application/json"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"
