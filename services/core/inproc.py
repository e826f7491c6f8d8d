"""The in-process channel: a generated stub on it calls the co-located servicer directly.

docs/architecture.md §2.4: topology is configuration, never code. Callers always hold generated stubs; when
the callee lives in the same process the stub sits on an `InProcessChannel` (no sockets, no
serialization: the request object is handed over as is, so callees must not mutate requests);
otherwise on a real `grpc.aio` channel. Errors look the same either way: a servicer wrapped by
`rpc.rpc_method` re-raises its GatewayError here, and `calls.py` decodes remote ones.

Traces look the same either way too: where a gRPC hop gets its client and server spans from the
OpenTelemetry interceptors, an in-process call gets one span named like them (the method path,
`rpc.*` attributes), covering a stream until its last item; none while tracing is off
(docs/observability.md §4).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.core import telemetry
from services.core.errors import GatewayError, Reason, error_for_code
from services.core.rpc import InProcessContext

Metadata = Sequence[tuple[str, str | bytes]]


class InProcessServicerContext(InProcessContext):
    """The subset of `grpc.aio.ServicerContext` our servicers use, for direct calls."""

    def __init__(self, metadata: Metadata | None) -> None:
        self._metadata = tuple(metadata or ())
        self.initial_metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.trailing_metadata_sent: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    async def send_initial_metadata(self, metadata: Metadata) -> None:
        self.initial_metadata = tuple(metadata)

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailing_metadata_sent = tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()) -> None:
        raise error_for_code(code, details)

    def peer(self) -> str:
        return "inproc"

    def cancelled(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None


class _HandlerRecorder:
    """Stands in for a grpc server while `add_*Servicer_to_server` registers handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for method, handler in handlers.items():
            self.handlers[f"/{service}/{method}"] = handler

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The registered handlers above already cover every method."""


def _start_span(path: str) -> Span:
    service, _, method = path.lstrip("/").partition("/")
    return telemetry.TRACER.start_span(path, kind=SpanKind.INTERNAL, attributes={
        "rpc.system": "grpc", "rpc.service": service, "rpc.method": method, "rpc.transport": "inproc"})


def _failed(span: Span, error: BaseException) -> None:
    """Marks `span` failed the way the gRPC instrumentation marks a failed hop."""
    if isinstance(error, GatewayError):
        span.set_attribute("rpc.grpc.status_code", error.kind.grpc_code.value[0])
        span.set_attribute("aggregator.error.reason", error.reason.value)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


async def _traced(path: str, items: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    """`items` with a span open from the first item to the last. The span is made current only
    while the servicer runs (each `anext`), never across a `yield`: the caller's code between
    items must not become its child, and a context attached in one step is detached in it."""
    span = _start_span(path)
    context = trace.set_span_in_context(span)
    try:
        while True:
            token = otel_context.attach(context)
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            finally:
                otel_context.detach(token)
            yield item
    except (GeneratorExit, asyncio.CancelledError):
        span.set_attribute("rpc.cancelled", True)  # the caller left early: not a failure
        raise
    except BaseException as error:
        _failed(span, error)
        raise
    finally:
        closer = getattr(items, "aclose", None)
        if closer is not None:
            await closer()
        span.end()


class InProcessChannel:
    """A channel whose calls run servicers registered in this process."""

    def __init__(self) -> None:
        self._recorder = _HandlerRecorder()

    def register(self, add_to_server: Callable[[Any, Any], None], servicer: Any) -> None:
        """Registers a servicer with its generated `add_XServicer_to_server` function."""
        add_to_server(servicer, self._recorder)

    def _handler(self, path: str) -> grpc.RpcMethodHandler:
        try:
            return self._recorder.handlers[path]
        except KeyError:
            raise GatewayError(Reason.UNIMPLEMENTED, f"{path} is not served in this process") from None

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        async def call(request: Any, *, metadata: Metadata | None = None, **_: Any) -> Any:
            handler = self._handler(path)
            if not telemetry.tracing_on():
                return await handler.unary_unary(request, InProcessServicerContext(metadata))
            span = _start_span(path)
            try:
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    return await handler.unary_unary(request, InProcessServicerContext(metadata))
            except asyncio.CancelledError:
                span.set_attribute("rpc.cancelled", True)
                raise
            except BaseException as error:
                _failed(span, error)
                raise
            finally:
                span.end()

        return call

    def unary_stream(self, path: str, *args: Any, **kwargs: Any) -> Callable[..., AsyncIterator[Any]]:
        def call(request: Any, *, metadata: Metadata | None = None, **_: Any) -> AsyncIterator[Any]:
            items = self._handler(path).unary_stream(request, InProcessServicerContext(metadata))
            return _traced(path, items) if telemetry.tracing_on() else items

        return call

    async def close(self) -> None:
        """Nothing to release: no sockets."""
