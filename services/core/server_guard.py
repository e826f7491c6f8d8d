"""The checks every gRPC server runs before a servicer sees a call:

- internal services answer only callers holding the service token (service_token.py,
  docs/architecture.md §2.10);
- a client's native gRPC request to a public service may be at most `max_request_bytes` (10 MiB,
  the same limit Envoy puts on JSON bodies; docs/edge.md "Size limits"). Past it the client gets
  RESOURCE_EXHAUSTED with our ErrorInfo `REQUEST_TOO_LARGE` and a message naming the limit, never
  gRPC's bare RESOURCE_EXHAUSTED, which the gateway reads as an answer over a size limit.
  Requests Envoy transcoded from JSON (they carry `x-envoy-original-method`, which Envoy removes
  from what clients send) were held to the limit as JSON already; their protobuf form may be
  larger, up to the server's receive ceiling (limits.MAX_RECEIVE_BYTES).

A refused call never reaches the servicer, and its request is not even decoded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.core import limits
from services.core.decoding import RefusedRequest
from services.core.errors import GatewayError, Reason
from services.core.rpc import abort
from services.core.service_token import SERVICE_TOKEN_KEY, is_public, token_matches


def _denied() -> GatewayError:
    return GatewayError(Reason.SERVICE_UNAUTHENTICATED,
                        f"This service is internal: calls need the deployment's service token "
                        f"({SERVICE_TOKEN_KEY}).")


def _ignore(_: bytes) -> None:
    return None


TRANSCODED_KEY = "x-envoy-original-method"  # set by Envoy's transcoder on a request it made from JSON


def too_large(size: int, limit: int) -> GatewayError:
    """The error of a request message over the limit, naming both sizes."""
    return GatewayError(Reason.REQUEST_TOO_LARGE,
                        f"The request is {size:,} bytes, more than the gateway's limit of "
                        f"{limits.describe(limit)} for one request.")


def size_limited(handler: grpc.RpcMethodHandler, limit: int) -> grpc.RpcMethodHandler:
    """`handler` with its request held to `limit` bytes: the message is measured before it is
    decoded, and one over the limit is answered REQUEST_TOO_LARGE. Streaming requests (server
    reflection) are left as they are."""
    decode = handler.request_deserializer

    def measured(data: bytes) -> Any:
        if len(data) > limit:
            return RefusedRequest(too_large(len(data), limit))
        return decode(data) if decode is not None else data

    if handler.unary_unary is not None:
        unary_behavior = handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            if isinstance(request, RefusedRequest):
                await abort(context, request.error)
            return await unary_behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, measured, handler.response_serializer)
    if handler.unary_stream is not None:
        stream_behavior = handler.unary_stream

        # An async generator function itself: grpc.aio runs any other callable as a sync generator.
        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, RefusedRequest):
                await abort(context, request.error)
            # aclosing: a client that goes away closes the servicer's stream (and its upstream) now.
            async with contextlib.aclosing(stream_behavior(request, context)) as items:
                async for item in items:
                    yield item

        return grpc.unary_stream_rpc_method_handler(streaming, measured, handler.response_serializer)
    return handler


def _transcoded(metadata: Any) -> bool:
    return any(key == TRANSCODED_KEY for key, _ in metadata or ())


def refusing(handler: grpc.RpcMethodHandler, error: GatewayError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers `error` without decoding the request."""

    async def unary(request: Any, context: Any) -> Any:
        await abort(context, error)

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        await abort(context, error)
        yield  # never reached: makes this an async generator, as a streaming handler must be

    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, _ignore, serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, _ignore, serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, _ignore, serializer)
    return grpc.stream_stream_rpc_method_handler(streaming, _ignore, serializer)


class ServerGuard(grpc.aio.ServerInterceptor):
    """Refuses calls to internal services without the service token (UNAUTHENTICATED), and native
    gRPC requests to public services over `max_request_bytes` (REQUEST_TOO_LARGE)."""

    def __init__(self, service_token: str, max_request_bytes: int = limits.MAX_REQUEST_BYTES) -> None:
        self._token = service_token
        self._max_request_bytes = max_request_bytes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        if is_public(details.method):
            if _transcoded(details.invocation_metadata):
                return handler
            return size_limited(handler, self._max_request_bytes)
        if token_matches(self._token, details.invocation_metadata):
            return handler
        return refusing(handler, _denied())
