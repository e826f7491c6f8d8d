"""The in-process channel: a generated stub on it calls the co-located servicer directly.

docs/architecture.md §2.4: topology is configuration, never code. Callers always hold generated stubs; when
the callee lives in the same process the stub sits on an `InProcessChannel` (no sockets, no
serialization: the request object is handed over as is, so callees must not mutate requests);
otherwise on a real `grpc.aio` channel. Errors look the same either way: a servicer wrapped by
`rpc.rpc_method` re-raises its GatewayError here, and `calls.py` decodes remote ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

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
            return await self._handler(path).unary_unary(request, InProcessServicerContext(metadata))

        return call

    def unary_stream(self, path: str, *args: Any, **kwargs: Any) -> Callable[..., AsyncIterator[Any]]:
        def call(request: Any, *, metadata: Metadata | None = None, **_: Any) -> AsyncIterator[Any]:
            return self._handler(path).unary_stream(request, InProcessServicerContext(metadata))

        return call

    async def close(self) -> None:
        """Nothing to release: no sockets."""
