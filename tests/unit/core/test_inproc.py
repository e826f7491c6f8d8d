"""Generated stubs on the in-process channel, the servicer error policy and the call helpers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from aggregator.adapter.v1 import adapter_service_pb2 as adapter_pb
from aggregator.adapter.v1 import adapter_service_pb2_grpc as adapter_grpc
from aggregator.auth.v1 import auth_service_pb2 as auth_pb
from aggregator.auth.v1 import auth_service_pb2_grpc as auth_grpc
from aggregator.routing.v1 import route_pb2
from aggregator.routing.v1 import routing_service_pb2 as routing_pb
from aggregator.routing.v1 import routing_service_pb2_grpc as routing_grpc
from services.core import calls, telemetry
from services.core.errors import GatewayError, Reason, from_rpc_error
from services.core.inproc import InProcessChannel, InProcessServicerContext
from services.core.rpc import abort, metadata_value, rpc_method

GENERIC = "The server had an error while processing your request."
NOT_FOUND = GatewayError(Reason.MODEL_NOT_FOUND, "The model `missing` does not exist.", param="model")


class Routing(routing_grpc.RoutingServiceServicer):
    """Answers one candidate named after the request; fails on demand."""

    def __init__(self) -> None:
        self.contexts: list[Any] = []

    @rpc_method
    async def ResolveRoute(self, request: routing_pb.ResolveRouteRequest,
                           context: Any) -> routing_pb.ResolveRouteResponse:
        self.contexts.append(context)
        if request.model == "missing":
            raise NOT_FOUND
        if request.model == "boom":
            raise RuntimeError("connection to postgresql://admin:hunter2@db failed")
        return routing_pb.ResolveRouteResponse(candidates=[route_pb2.RouteCandidate(
            public_model=request.model, upstream_model=metadata_value(context, "x-request-id") or "")])


class Adapter(adapter_grpc.AdapterServiceServicer):
    """Streams `n` events (n from timeout_ms), then optionally fails."""

    def __init__(self) -> None:
        self.closed = 0
        self.fail_with: BaseException | None = None

    @rpc_method
    async def Chat(self, request: adapter_pb.ChatRequest,
                   context: Any) -> AsyncIterator[adapter_pb.ChatResponse]:
        try:
            for i in range(request.timeout_ms):
                yield adapter_pb.ChatResponse(body=b"event-%d" % i, has_content=True)
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.closed += 1


@pytest.fixture
def routing() -> Routing:
    return Routing()


@pytest.fixture
def adapter() -> Adapter:
    return Adapter()


@pytest.fixture
def channel(routing: Routing, adapter: Adapter) -> InProcessChannel:
    channel = InProcessChannel()
    channel.register(routing_grpc.add_RoutingServiceServicer_to_server, routing)
    channel.register(adapter_grpc.add_AdapterServiceServicer_to_server, adapter)
    return channel


# --- unary -------------------------------------------------------------------------------------

async def test_unary_call_through_generated_stub(channel: InProcessChannel, routing: Routing) -> None:
    stub = routing_grpc.RoutingServiceStub(channel)
    request = routing_pb.ResolveRouteRequest(model="gpt-4o-mini")
    answer = await calls.unary(stub.ResolveRoute, request)
    assert [c.public_model for c in answer.candidates] == ["gpt-4o-mini"]
    assert isinstance(routing.contexts[0], InProcessServicerContext)


async def test_caller_metadata_is_visible_to_the_servicer(channel: InProcessChannel,
                                                          routing: Routing) -> None:
    stub = routing_grpc.RoutingServiceStub(channel)
    metadata = (("x-request-id", "req-42"), ("authorization", "Bearer k"), ("trace-bin", b"\x01\x02"))
    request = routing_pb.ResolveRouteRequest(model="m")
    answer = await calls.unary(stub.ResolveRoute, request, metadata=metadata)
    assert answer.candidates[0].upstream_model == "req-42"
    context = routing.contexts[0]
    assert metadata_value(context, "authorization") == "Bearer k"
    assert metadata_value(context, "trace-bin") == "\x01\x02"  # bytes values come back decoded
    assert metadata_value(context, "absent") is None
    assert context.invocation_metadata() == metadata


async def test_no_metadata_at_all(channel: InProcessChannel, routing: Routing) -> None:
    stub = routing_grpc.RoutingServiceStub(channel)
    await calls.unary(stub.ResolveRoute, routing_pb.ResolveRouteRequest(model="m"))
    assert metadata_value(routing.contexts[0], "x-request-id") is None


async def test_gateway_error_reaches_the_caller_unchanged(channel: InProcessChannel) -> None:
    stub = routing_grpc.RoutingServiceStub(channel)
    with pytest.raises(GatewayError) as info:
        await calls.unary(stub.ResolveRoute, routing_pb.ResolveRouteRequest(model="missing"))
    assert info.value is NOT_FOUND
    assert (info.value.reason, info.value.param) == (Reason.MODEL_NOT_FOUND, "model")


async def test_unexpected_exception_becomes_generic_internal(channel: InProcessChannel,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    stub = routing_grpc.RoutingServiceStub(channel)
    with caplog.at_level(logging.ERROR, logger="services.core.rpc"):
        with pytest.raises(GatewayError) as info:
            await calls.unary(stub.ResolveRoute, routing_pb.ResolveRouteRequest(model="boom"))
    assert info.value.reason is Reason.INTERNAL and info.value.message == GENERIC
    assert "hunter2" not in str(info.value.to_openai()) and "hunter2" not in repr(info.value)
    # Logged once, with the traceback, for the operator.
    records = [r for r in caplog.records if r.name == "services.core.rpc"]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "Routing.ResolveRoute" in records[0].getMessage()


async def test_unregistered_service_is_unimplemented() -> None:
    stub = auth_grpc.AuthServiceStub(InProcessChannel())
    with pytest.raises(GatewayError) as info:
        await calls.unary(stub.Authenticate, auth_pb.AuthenticateRequest(api_key="k"))
    assert info.value.reason is Reason.UNIMPLEMENTED
    assert "/aggregator.auth.v1.AuthService/Authenticate" in info.value.message


# --- streaming ---------------------------------------------------------------------------------

async def test_stream_yields_every_event_and_closes(channel: InProcessChannel, adapter: Adapter) -> None:
    stub = adapter_grpc.AdapterServiceStub(channel)
    async with calls.stream(stub.Chat, adapter_pb.ChatRequest(timeout_ms=3)) as events:
        bodies = [event.body async for event in events]
    assert bodies == [b"event-0", b"event-1", b"event-2"]
    assert adapter.closed == 1


async def test_leaving_the_stream_early_closes_the_servicer_generator(channel: InProcessChannel,
                                                                      adapter: Adapter) -> None:
    stub = adapter_grpc.AdapterServiceStub(channel)
    async with calls.stream(stub.Chat, adapter_pb.ChatRequest(timeout_ms=100)) as events:
        first = await anext(events)
        assert first.body == b"event-0"
        assert adapter.closed == 0
    # Right away, not at garbage collection: the servicer's `finally` releases the upstream.
    assert adapter.closed == 1


async def test_exception_in_the_caller_block_closes_the_servicer_generator(channel: InProcessChannel,
                                                                          adapter: Adapter) -> None:
    stub = adapter_grpc.AdapterServiceStub(channel)
    with pytest.raises(KeyError):
        async with calls.stream(stub.Chat, adapter_pb.ChatRequest(timeout_ms=100)) as events:
            await anext(events)
            raise KeyError("client went away")
    assert adapter.closed == 1


async def test_stream_gateway_error_after_events_reaches_the_caller(channel: InProcessChannel,
                                                                    adapter: Adapter) -> None:
    error = GatewayError(Reason.UPSTREAM_TIMEOUT, "The upstream provider timed out.")
    adapter.fail_with = error
    stub = adapter_grpc.AdapterServiceStub(channel)
    seen: list[bytes] = []
    with pytest.raises(GatewayError) as info:
        async with calls.stream(stub.Chat, adapter_pb.ChatRequest(timeout_ms=2)) as events:
            async for event in events:
                seen.append(event.body)
    assert info.value is error
    assert seen == [b"event-0", b"event-1"]
    assert adapter.closed == 1


async def test_stream_unexpected_exception_becomes_generic_internal(channel: InProcessChannel,
                                                                    adapter: Adapter) -> None:
    adapter.fail_with = ValueError("api key sk-secret rejected")
    stub = adapter_grpc.AdapterServiceStub(channel)
    with pytest.raises(GatewayError) as info:
        async with calls.stream(stub.Chat, adapter_pb.ChatRequest(timeout_ms=0)) as events:
            async for _ in events:
                pass
    assert info.value.reason is Reason.INTERNAL and info.value.message == GENERIC


# --- calls.py against remote-shaped calls (no sockets: fakes raising AioRpcError) --------------

def remote_error(error: GatewayError) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(error.kind.grpc_code, initial_metadata=grpc.aio.Metadata(),
                                trailing_metadata=grpc.aio.Metadata(*error.trailing_metadata()),
                                details=error.message)


async def test_unary_translates_remote_errors_and_passes_kwargs() -> None:
    sent = GatewayError(Reason.QUOTA_EXCEEDED, "You exceeded your quota.", retry_after=30)
    received_kwargs: dict[str, Any] = {}

    async def method(request: Any, **kwargs: Any) -> Any:
        received_kwargs.update(kwargs)
        raise remote_error(sent)

    with pytest.raises(GatewayError) as info:
        await calls.unary(method, object(), metadata=(("a", "b"),), timeout=5)
    assert (info.value.reason, info.value.message, info.value.retry_after) == (
        Reason.QUOTA_EXCEEDED, "You exceeded your quota.", 30.0)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert received_kwargs == {"metadata": (("a", "b"),), "timeout": 5}


class RemoteStream:
    """Stands in for a grpc.aio UnaryStreamCall: async iterable plus cancel()."""

    def __init__(self, items: list[Any], error: grpc.aio.AioRpcError | None = None) -> None:
        self.items, self.error, self.cancelled = list(items), error, False

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> Any:
        if self.items:
            return self.items.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    def cancel(self) -> bool:
        self.cancelled = True
        return True


async def test_stream_translates_remote_errors_and_cancels() -> None:
    call = RemoteStream(["a"], remote_error(GatewayError(Reason.UPSTREAM_UNAVAILABLE, "down")))
    items: list[Any] = []
    with pytest.raises(GatewayError) as info:
        async with calls.stream(lambda request, **_: call, object()) as events:
            async for item in events:
                items.append(item)
    assert items == ["a"]
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE and info.value.retriable
    assert call.cancelled


async def test_leaving_a_remote_stream_early_cancels_the_call() -> None:
    call = RemoteStream(["a", "b", "c"])
    async with calls.stream(lambda request, **_: call, object()) as events:
        assert await anext(events) == "a"
    assert call.cancelled


# --- rpc.abort on a real (non in-process) servicer context --------------------------------------

class RecordingContext:
    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details, tuple(trailing_metadata))
        raise grpc.aio.AbortError()


async def test_abort_on_a_grpc_context_sends_code_message_and_trailers() -> None:
    context = RecordingContext()
    error = GatewayError(Reason.MODEL_NOT_ALLOWED, "not this one", param="model")
    token = telemetry.request_id_var.set("req-7")
    try:
        with pytest.raises(grpc.aio.AbortError):
            await abort(context, error)
    finally:
        telemetry.request_id_var.reset(token)
    assert context.aborted is not None
    code, details, trailers = context.aborted
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "not this one")
    assert trailers == (*error.trailing_metadata(), ("x-request-id", "req-7"))
    rebuilt = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details)
    assert from_rpc_error(rebuilt).to_openai() == error.to_openai()


async def test_rpc_method_on_a_grpc_context_aborts_with_internal() -> None:
    context = RecordingContext()
    with pytest.raises(grpc.aio.AbortError):
        await Routing().ResolveRoute(routing_pb.ResolveRouteRequest(model="boom"), context)
    assert context.aborted is not None
    code, details, trailers = context.aborted
    assert (code, details) == (grpc.StatusCode.INTERNAL, GENERIC)
    assert ("x-http-status", "500") in trailers
    assert not any("x-request-id" == k for k, _ in trailers)  # no request id in this context


async def test_abort_error_from_the_servicer_passes_through_untouched() -> None:
    class Aborting(routing_grpc.RoutingServiceServicer):
        @rpc_method
        async def ResolveRoute(self, request: Any, context: Any) -> Any:
            raise grpc.aio.AbortError()

    context = RecordingContext()
    with pytest.raises(grpc.aio.AbortError):
        await Aborting().ResolveRoute(routing_pb.ResolveRouteRequest(), context)
    assert context.aborted is None  # not aborted a second time


async def test_in_process_context_surface() -> None:
    context = InProcessServicerContext([("k", "v")])
    await context.send_initial_metadata([("a", "1")])
    context.set_trailing_metadata([("b", "2")])
    assert context.initial_metadata == (("a", "1"),) and context.trailing_metadata_sent == (("b", "2"),)
    assert (context.peer(), context.cancelled(), context.time_remaining()) == ("inproc", False, None)
    with pytest.raises(GatewayError):
        await context.abort(grpc.StatusCode.NOT_FOUND, "gone")
