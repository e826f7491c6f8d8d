"""The Envoy edge, with a real Envoy (docs/architecture.md §3), in front of a grpc.aio server in this process.

The server's `OpenAIService` behaves by `model`: it answers, streams, fails before or after its
headers, crashes or waits; `user` carries a per-test token. HTTP clients must get OpenAI bytes and
OpenAI errors with no gRPC plumbing; native gRPC clients must get everything untouched.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
import pytest_asyncio
from google.api import httpbody_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from aggregator.openai.v1 import (
    chat_pb2,
    inference_service_pb2_grpc,
    model_pb2,
    openai_service_pb2,
    openai_service_pb2_grpc,
)
from services.core.errors import GatewayError, Reason, from_rpc_error
from services.core.rpc import rpc_method
from services.runtime.envoy import DEFAULT_DESCRIPTOR_PATH, DEFAULT_LUA_PATH, render_bootstrap
from services.runtime.envoy_process import envoy_binary
from services.runtime.envoy_replies import NOT_JSON_MESSAGE
from tests.support.envoy import EnvoyEdge, envoy_in_front_of, free_port, h2c_post

PLUMBING = {"grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-accept-encoding",
            "x-openai-error", "x-http-status"}
JSON_CONTENT = {"content-type": "application/json"}
FIRST, SECOND, DONE = b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b"data: [DONE]\n\n"


def sse(data: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="text/event-stream", data=data)


@dataclass
class Backend:
    """What the test servicer saw and what it waits for, keyed by the request's `user` token."""

    port: int = 0
    gates: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    cancelled_at: dict[str, float] = field(default_factory=dict)
    cancelled: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))


class FakeOpenAIService(openai_service_pb2_grpc.OpenAIServiceServicer):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @rpc_method
    async def CreateChatCompletion(self, request: Any, context: Any) -> AsyncIterator[httpbody_pb2.HttpBody]:
        seen = dict(context.invocation_metadata())
        behaviour, token = request.model, request.user
        if behaviour == "json":
            await context.send_initial_metadata((("x-ratelimit-limit-requests", "60"),
                                                 ("x-request-id", seen["x-request-id"])))
            yield httpbody_pb2.HttpBody(content_type="application/json", data=orjson.dumps({
                "object": "chat.completion", "request_id": seen["x-request-id"],
                "authorization": seen.get("authorization"), "user_length": len(token)}))
        elif behaviour == "sse-gated":
            yield sse(FIRST)
            await asyncio.wait_for(self.backend.gates[token].wait(), 10)
            yield sse(SECOND)
            yield sse(DONE)
        elif behaviour == "sse-error":
            yield sse(FIRST)
            error = GatewayError(Reason.UPSTREAM_ERROR, "The upstream failed.")
            yield sse(b"data: " + error.to_json() + b"\n\n")
        elif behaviour == "cancel":
            yield sse(FIRST)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.backend.cancelled_at[token] = asyncio.get_running_loop().time()
                self.backend.cancelled[token].set()
                raise
        elif behaviour == "fail-after-headers":
            await context.send_initial_metadata((("x-ratelimit-limit-requests", "60"),))
            raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider failed.")
        elif behaviour == "fail-bare-resource-exhausted":
            # What gRPC itself sends for a message over a size limit: no metadata of ours.
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (9 vs. 4)")
        elif behaviour == "fail-extra-headers":
            error = GatewayError(Reason.QUOTA_EXCEEDED, "You exceeded your quota.", retry_after=30)
            await context.abort(error.kind.grpc_code, error.message, trailing_metadata=(
                *error.trailing_metadata(), ("x-ratelimit-remaining-requests", "0")))
        else:
            yield await self._fail(behaviour)

    async def _fail(self, behaviour: str) -> httpbody_pb2.HttpBody:
        if behaviour == "fail-rate-limit":
            raise GatewayError(Reason.RATE_LIMITED, "Rate limit reached for requests.", retry_after=7)
        if behaviour == "fail-413":
            raise GatewayError(Reason.REQUEST_TOO_LARGE, "Too many messages.", param="messages")
        raise RuntimeError("secret detail: /etc/passwd")  # behaviour "crash" and anything unknown

    async def CreateCompletion(self, request: Any, context: Any) -> AsyncIterator[httpbody_pb2.HttpBody]:
        raise RuntimeError("an unhandled secret detail")  # no @rpc_method: gRPC's own UNKNOWN status
        yield  # pragma: no cover

    @rpc_method
    async def ListModels(self, request: Any, context: Any) -> openai_service_pb2.ListModelsResponse:
        model = model_pb2.Model(id="openai/gpt-4o-mini", object="model", created=1700000000,
                                owned_by="openai")
        return openai_service_pb2.ListModelsResponse(object="list", data=[model])

    @rpc_method
    async def GetModel(self, request: Any, context: Any) -> Any:
        raise GatewayError(Reason.MODEL_NOT_FOUND, f"The model '{request.id}' does not exist", param="model")


class FakeInferenceService(inference_service_pb2_grpc.InferenceServiceServicer):
    async def StreamChatCompletion(self, request: Any,
                                   context: Any) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        for index in range(2):
            yield chat_pb2.ChatCompletionChunk(id=f"chunk-{index}", object="chat.completion.chunk",
                                               model=request.model)


@pytest_asyncio.fixture(scope="module")
async def backend() -> AsyncIterator[Backend]:
    state = Backend()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])
    openai_service_pb2_grpc.add_OpenAIServiceServicer_to_server(FakeOpenAIService(state), server)
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(FakeInferenceService(), server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        ["aggregator.openai.v1.OpenAIService", "aggregator.openai.v1.InferenceService", health.SERVICE_NAME,
         reflection.SERVICE_NAME], server)
    state.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield state
    await server.stop(grace=None)


@pytest.fixture(scope="module")
def edge(backend: Backend) -> Any:
    with envoy_in_front_of(backend.port) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def http(edge: EnvoyEdge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=15) as client:
        yield client


@pytest_asyncio.fixture(scope="module")
async def channel(edge: EnvoyEdge) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(edge.grpc_target) as opened:
        yield opened


def assert_no_plumbing(headers: Any) -> None:
    for key in headers.keys():
        assert key.lower() not in PLUMBING and not key.lower().startswith(("grpc-", "x-envoy-")), key


def assert_openai_error(response: httpx.Response, status: int, error_type: str, code: str | None,
                        message: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert_no_plumbing(response.headers)
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert (error["type"], error["code"], error["param"]) == (error_type, code, param)
    assert isinstance(error["message"], str) and error["message"]
    if message is not None:
        assert error["message"] == message
    for leak in ("envoy", "upstream connect", "Traceback", "secret", "google.rpc", "INVALID_ARGUMENT"):
        assert leak not in response.text
    return error


def chat(model: str, user: str = "", **fields: Any) -> dict[str, Any]:
    return {"model": model, "user": user, "messages": [{"role": "user", "content": "hi"}], **fields}


def test_envoy_accepts_the_repository_descriptor_set(tmp_path: Path) -> None:
    # Every google.api.http binding of protos/ must be one Envoy's transcoder can serve.
    bootstrap = render_bootstrap(http_port=free_port(), admin_port=free_port(), upstreams=[("127.0.0.1", 1)],
                                 descriptor_path=DEFAULT_DESCRIPTOR_PATH, lua_path=DEFAULT_LUA_PATH)
    config = tmp_path / "envoy.json"
    config.write_text(orjson.dumps(bootstrap).decode())
    result = subprocess.run([str(envoy_binary()), "--mode", "validate", "--config-path", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


# --- HTTP: success ------------------------------------------------------------------------------


async def test_json_success_carries_service_headers_and_envoy_request_id(http: httpx.AsyncClient) -> None:
    headers = {"authorization": "Bearer sk_live_test", "x-request-id": "client-chosen"}
    response = await http.post("/v1/chat/completions", json=chat("json"), headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion" and body["authorization"] == "Bearer sk_live_test"
    # Envoy made the id (never the client's), the service saw it, and the client gets it back once.
    assert body["request_id"] != "client-chosen"
    assert response.headers.get_list("x-request-id") == [body["request_id"]]
    assert response.headers["x-ratelimit-limit-requests"] == "60"
    assert "server" not in response.headers
    assert_no_plumbing(response.headers)


async def test_typed_response_prints_snake_case_numbers_and_defaults(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/models")
    assert response.status_code == 200
    assert_no_plumbing(response.headers)
    body = response.json()
    assert body["object"] == "list" and body["next_page_token"] == ""
    model = body["data"][0]
    assert model["id"] == "openai/gpt-4o-mini" and model["created"] == 1700000000
    assert model["owned_by"] == "openai" and model["context_window"] == 0


async def test_sse_chunks_reach_http11_client_one_by_one(http: httpx.AsyncClient, backend: Backend) -> None:
    async with http.stream("POST", "/v1/chat/completions", json=chat("sse-gated", "gate-1")) as response:
        assert response.status_code == 200 and response.http_version == "HTTP/1.1"
        assert response.headers["content-type"] == "text/event-stream"
        assert_no_plumbing(response.headers)
        chunks = response.aiter_raw()
        received = b""
        while FIRST not in received:
            received += await asyncio.wait_for(anext(chunks), 5)
        # The server holds the second chunk until we have the first one: proof it was not buffered.
        assert received == FIRST
        backend.gates["gate-1"].set()
        async for chunk in chunks:
            received += chunk
    assert received == FIRST + SECOND + DONE


async def test_in_band_stream_error_ends_cleanly_for_http11(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json=chat("sse-error"))
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    events = response.content.split(b"\n\n")
    assert events[0] + b"\n\n" == FIRST and events[2:] == [b""]
    error = orjson.loads(events[1].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_error" and b"[DONE]" not in response.content


async def test_body_just_under_the_limit_passes(http: httpx.AsyncClient) -> None:
    user = "u" * (10 * 1024 * 1024 - 1024)
    response = await http.post("/v1/chat/completions", content=orjson.dumps(chat("json", user)),
                               headers=JSON_CONTENT)
    assert response.status_code == 200 and response.json()["user_length"] == len(user)


# --- HTTP: errors from the service ----------------------------------------------------------------


async def test_trailers_only_error_becomes_openai_error_with_retry_after(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json=chat("fail-rate-limit"))
    assert_openai_error(response, 429, "rate_limit_error", "rate_limit_exceeded",
                        "Rate limit reached for requests.")
    assert response.headers["retry-after"] == "7"
    assert response.headers["content-length"] == str(len(response.content))


async def test_http_status_comes_from_metadata_not_grpc_code(http: httpx.AsyncClient) -> None:
    # INVALID_ARGUMENT alone would give 400; x-http-status says 413.
    response = await http.post("/v1/chat/completions", json=chat("fail-413"))
    assert_openai_error(response, 413, "invalid_request_error", "request_too_large", "Too many messages.",
                        param="messages")


async def test_error_after_service_headers_is_still_shaped(http: httpx.AsyncClient) -> None:
    # UNAVAILABLE alone would give 503; x-http-status (in the trailers this time) says 502.
    response = await http.post("/v1/chat/completions", json=chat("fail-after-headers"))
    assert_openai_error(response, 502, "upstream_error", "upstream_error", "The upstream provider failed.")
    assert response.headers["x-ratelimit-limit-requests"] == "60"


async def test_extra_trailing_metadata_becomes_headers(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json=chat("fail-extra-headers"))
    assert_openai_error(response, 429, "insufficient_quota", "insufficient_quota", "You exceeded your quota.")
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["retry-after"] == "30"


async def test_bare_resource_exhausted_is_a_502_not_a_rate_limit(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json=chat("fail-bare-resource-exhausted"))
    error = assert_openai_error(response, 502, "server_error", "response_too_large")
    assert "size limit" in error["message"] and "retry-after" not in response.headers


async def test_crash_is_generic_internal_error(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json=chat("crash"))
    assert_openai_error(response, 500, "server_error", "internal_error",
                        "The server had an error while processing your request.")


async def test_status_without_our_metadata_gets_generic_body(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/completions", json={"model": "x", "prompt": "hi"})
    assert_openai_error(response, 500, "server_error", "internal_error")


@pytest.mark.parametrize("path", ["/v1/models/openai/gpt-x", "/v1/models/openai%2Fgpt-x"])
async def test_not_found_with_slashes_in_the_id(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert_openai_error(response, 404, "invalid_request_error", "model_not_found",
                        "The model 'openai/gpt-x' does not exist", param="model")


# --- HTTP: Envoy's own replies ------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"model": "json", "messages": [', b"not json", b"{'model': 'json'}"])
async def test_unparsable_body_is_400_in_openais_words(http: httpx.AsyncClient, body: bytes) -> None:
    response = await http.post("/v1/chat/completions", content=body, headers=JSON_CONTENT)
    assert_openai_error(response, 400, "invalid_request_error", None, NOT_JSON_MESSAGE)


@pytest.mark.parametrize("body", [b'{"model": "json", "messages": 5}',
                                  b'{"model": "json", "temperature": "hot"}'])
async def test_mistyped_body_is_400(http: httpx.AsyncClient, body: bytes) -> None:
    response = await http.post("/v1/chat/completions", content=body, headers=JSON_CONTENT)
    assert_openai_error(response, 400, "invalid_request_error", "invalid_request_body")


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/nothing"), ("GET", "/v1/chat/completions"),
                                               ("DELETE", "/v1/models")])
async def test_unknown_path_or_method_is_404(http: httpx.AsyncClient, method: str, path: str) -> None:
    response = await http.request(method, path + "?q=1", json={} if method == "POST" else None)
    assert_openai_error(response, 404, "invalid_request_error", "unknown_url",
                        f"Invalid URL ({method} {path})")


async def test_body_over_10_mib_is_413_with_content_length_or_chunked(http: httpx.AsyncClient) -> None:
    body = orjson.dumps(chat("json", "u" * (11 * 1024 * 1024)))

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    for content in (body, chunked()):
        response = await http.post("/v1/chat/completions", content=content,
                                   headers=JSON_CONTENT)
        assert_openai_error(response, 413, "invalid_request_error", "request_too_large",
                            "Request body too large: the limit is 10485760 bytes.")


async def test_no_upstream_is_503_for_http_and_unavailable_for_grpc() -> None:
    with envoy_in_front_of(free_port()) as dead:
        async with httpx.AsyncClient(base_url=dead.base_url, timeout=10) as client:
            response = await client.post("/v1/chat/completions", json=chat("json"))
        assert_openai_error(response, 503, "server_error", "service_unavailable")
        async with grpc.aio.insecure_channel(dead.grpc_target) as channel:
            stub = openai_service_pb2_grpc.OpenAIServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.ListModels(openai_service_pb2.ListModelsRequest())
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "The service is temporarily unavailable."


# --- HTTP/2 cleartext ---------------------------------------------------------------------------


async def test_http2_cleartext_json_sse_and_errors(edge: EnvoyEdge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, http1=False, http2=True, timeout=10) as client:
        response = await client.post("/v1/chat/completions", json=chat("json"))
        assert response.http_version == "HTTP/2" and response.json()["object"] == "chat.completion"
        assert_no_plumbing(response.headers)
        streamed = await client.post("/v1/chat/completions", json=chat("sse-error"))
        assert streamed.content.startswith(FIRST) and streamed.headers["content-type"] == "text/event-stream"
        failed = await client.post("/v1/chat/completions", json=chat("fail-after-headers"))
        assert_openai_error(failed, 502, "upstream_error", "upstream_error")


async def test_http2_trailers_carry_no_grpc_plumbing(edge: EnvoyEdge) -> None:
    for model in ("sse-error", "json", "fail-after-headers"):
        async with asyncio.timeout(5):
            headers, _, trailers = await h2c_post(edge.http_port, "/v1/chat/completions",
                                                  orjson.dumps(chat(model)))
        assert headers[":status"] in ("200", "502")
        assert_no_plumbing(headers)
        assert_no_plumbing(trailers)


# --- disconnects and the access log -------------------------------------------------------------


async def test_client_disconnect_cancels_the_servicer_within_a_second(edge: EnvoyEdge,
                                                                      backend: Backend) -> None:
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat("cancel", "cancel-1")) as response:
            chunks = response.aiter_raw()
            assert await asyncio.wait_for(anext(chunks), 5) == FIRST
            closed_at = loop.time()
        # Leaving the block closes the connection: the response was not read to its end.
    await asyncio.wait_for(backend.cancelled["cancel-1"].wait(), 2)
    assert backend.cancelled_at["cancel-1"] - closed_at < 1.0


async def test_access_log_is_json_with_request_id_status_and_duration(http: httpx.AsyncClient,
                                                                      edge: EnvoyEdge) -> None:
    secret = "sk_live_" + "s" * 40
    response = await http.post("/v1/chat/completions", json=chat("fail-rate-limit"),
                               headers={"authorization": f"Bearer {secret}"})
    request_id = response.headers["x-request-id"]
    entry = edge.wait_access_log(lambda e: e.get("request_id") == request_id)
    assert entry["status"] == 429 and entry["path"] == "/v1/chat/completions" and entry["method"] == "POST"
    assert isinstance(entry["duration_ms"], int) and entry["protocol"] == "HTTP/1.1"
    assert secret not in edge.access_log_path.read_text()


async def until_refused(port: int) -> None:
    """Returns once the port refuses connections (within 5 s)."""
    for _ in range(250):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            # A connect that raced the listener closing: the next attempt is refused.
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await asyncio.sleep(0.02)
    raise AssertionError(f"port {port} still accepts connections")


async def test_drain_stops_accepting_and_lets_streams_finish(backend: Backend) -> None:
    with envoy_in_front_of(backend.port) as draining:
        async with httpx.AsyncClient(base_url=draining.base_url, timeout=10) as client:
            request = client.stream("POST", "/v1/chat/completions", json=chat("sse-gated", "drain-1"))
            async with request as response:
                chunks = response.aiter_raw()  # kept: a discarded iterator would close the response
                assert await asyncio.wait_for(anext(chunks), 5) == FIRST
                drained = asyncio.get_running_loop().run_in_executor(None, draining.process.drain, 10.0)
                await until_refused(draining.http_port)
                assert not drained.done()  # the stream in flight holds the drain open
                backend.gates["drain-1"].set()
                assert b"".join([chunk async for chunk in chunks]) == SECOND + DONE
            await asyncio.wait_for(drained, 5)


# --- native gRPC --------------------------------------------------------------------------------


async def test_native_grpc_unary_and_streaming_pass_untouched(channel: grpc.aio.Channel) -> None:
    stub = openai_service_pb2_grpc.OpenAIServiceStub(channel)
    models = await stub.ListModels(openai_service_pb2.ListModelsRequest())
    assert models.data[0].id == "openai/gpt-4o-mini"
    call = stub.CreateChatCompletion(chat_pb2.ChatCompletionRequest(model="json", user="grpc"))
    bodies = [body async for body in call]
    assert [b.content_type for b in bodies] == ["application/json"]
    initial = dict(await call.initial_metadata())
    assert initial["x-ratelimit-limit-requests"] == "60" and "x-request-id" in initial
    inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
    chunks = [c async for c in inference.StreamChatCompletion(chat_pb2.ChatCompletionRequest(model="m"))]
    assert [c.id for c in chunks] == ["chunk-0", "chunk-1"]


async def test_native_grpc_errors_keep_their_trailers(channel: grpc.aio.Channel) -> None:
    stub = openai_service_pb2_grpc.OpenAIServiceStub(channel)
    for model, reason in (("fail-rate-limit", Reason.RATE_LIMITED),
                          ("fail-after-headers", Reason.UPSTREAM_ERROR)):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _ in stub.CreateChatCompletion(chat_pb2.ChatCompletionRequest(model=model)):
                pass
        trailers = dict(failure.value.trailing_metadata())
        expected = GatewayError(reason, "")
        assert trailers["x-http-status"] == str(expected.http_status)
        assert orjson.loads(trailers["x-openai-error"])["error"]["code"] == expected.kind.openai_code
        assert from_rpc_error(failure.value).reason is reason


async def test_native_grpc_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health_stub = health_pb2_grpc.HealthStub(channel)
    answer = await health_stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    watch = health_stub.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    # Reflection is bidirectional: the answer must come while our side of the stream stays open.
    info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    await info.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    listed = await asyncio.wait_for(info.read(), 5)
    names = {service.name for service in listed.list_services_response.service}
    assert {"aggregator.openai.v1.OpenAIService", "aggregator.openai.v1.InferenceService"} <= names
    await info.done_writing()


async def test_access_log_rotates_past_its_size_and_envoy_writes_the_new_file(
        http: httpx.AsyncClient, edge: EnvoyEdge) -> None:
    """`aggregator up` keeps the access log to two files: past its size it moves to `.1` and Envoy,
    told to reopen its logs, carries on in a new file (services/runtime/up.py rotate_logs)."""
    before = (await http.post("/v1/chat/completions", json=chat("fail-rate-limit"))).headers["x-request-id"]
    edge.wait_access_log(lambda e: e.get("request_id") == before)
    assert edge.process.rotate_access_log(edge.access_log_path, 10**9) is False  # small: stays
    assert edge.process.rotate_access_log(edge.access_log_path, 1) is True
    rotated = edge.access_log_path.with_name(edge.access_log_path.name + ".1")
    assert before in rotated.read_text()
    after = (await http.post("/v1/chat/completions", json=chat("fail-rate-limit"))).headers["x-request-id"]
    edge.wait_access_log(lambda e: e.get("request_id") == after)  # the new file, reopened by Envoy
    assert before not in edge.access_log_path.read_text() and after not in rotated.read_text()
