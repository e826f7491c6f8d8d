"""A request protobuf cannot decode is the client's error (400), not the server's (500).

grpc.aio decodes each request before any servicer code runs and answers a decoding failure with
INTERNAL, which the edge shows as a 500. Through Envoy a client causes one such failure: depth.
The transcoder builds messages from JSON nested up to about 100 levels, while protobuf's decoder
stops at 100 message levels, and one level of JSON array costs two (Value, ListValue). The limit
itself stays: it bounds the decoder's recursion for native gRPC clients too (docs/edge.md,
"Nesting depth").

    tolerant(add_XServicer_to_server)  registers handlers whose decoding failure yields UNDECODABLE
    RefusedRequest(error)              what a handler receives instead of a request it must refuse
                                       (UNDECODABLE; server_guard's oversized requests): `rpc_method`
                                       answers it with its error before the servicer runs
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.core.errors import GatewayError, Reason


class RefusedRequest:
    """Stands for a request refused before decoding it, with the error its caller gets."""

    __slots__ = ("error",)

    def __init__(self, error: GatewayError) -> None:
        self.error = error


def undecodable_error() -> GatewayError:
    """The 400 of a request that could not be decoded."""
    return GatewayError(
        Reason.INVALID_REQUEST,
        "The request could not be read: it is nested too deeply (at most about 45 levels of JSON "
        "arrays or objects inside a field).",
        code="invalid_request_body",
    )


UNDECODABLE = RefusedRequest(undecodable_error())


def _safe(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError:
            return UNDECODABLE

    return decode


def _tolerant_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.request_deserializer is None:
        return handler
    return handler._replace(request_deserializer=_safe(handler.request_deserializer))


class _Tolerant:
    """Passes a generated `add_*_to_server` call on to `server` with tolerant handlers."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        tolerant = {name: _tolerant_handler(h) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, tolerant),))
        self._server.add_registered_method_handlers(service, tolerant)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Replaced by the tolerant ones made from the registered handlers above."""


def tolerant(add_to_server: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """`add_to_server` whose handlers decode into UNDECODABLE rather than fail."""

    def add(servicer: Any, server: Any) -> None:
        add_to_server(servicer, _Tolerant(server))

    return add
