"""Client-side helpers that make a stub call look the same on either channel kind.

`unary(...)` awaits a unary call; `stream(...)` is an async context manager over a
server-streaming call that cancels the call (remote) or closes the generator (in-process) when
the caller leaves early, e.g. because the HTTP client went away. Both translate remote gRPC
errors into GatewayError (errors.from_rpc_error) so callers handle one error type.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.core.errors import from_rpc_error

T = TypeVar("T")


async def unary(method: Callable[..., Awaitable[T]], request: Any, **kwargs: Any) -> T:
    """Calls a unary stub method; remote errors come back as GatewayError."""
    try:
        return await method(request, **kwargs)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


async def _translated(source: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    try:
        async for item in source:
            yield item
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


@contextlib.asynccontextmanager
async def stream(
    method: Callable[..., Any], request: Any, **kwargs: Any
) -> AsyncIterator[AsyncIterator[Any]]:
    """Opens a server-streaming call; leaving the block early cancels it."""
    call = method(request, **kwargs)
    iterator = _translated(call)
    try:
        yield iterator
    finally:
        await iterator.aclose()
        if inspect.isasyncgen(call):
            await call.aclose()
        elif hasattr(call, "cancel"):
            call.cancel()
