"""Servicer-side error handling: the one place that turns exceptions into gRPC statuses.

Wrap every RPC method of a servicer with `@rpc_method`. A request protobuf could not decode
or refused before decoding (`decoding.RefusedRequest`) gets its error. A `GatewayError` becomes a gRPC status
with its trailing metadata (see `errors.py`); any other exception is logged once and becomes
INTERNAL with no detail. On the in-process channel (`inproc.py`) the GatewayError is re-raised
as is, so a co-located caller sees exactly what a remote caller decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from services.core.decoding import RefusedRequest
from services.core.errors import GatewayError, internal_error
from services.core.telemetry import request_id_var

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
# The permission a servicer method declared with services.auth.permissions.requires (an attribute
# of the method), exposed while the method runs so the check at authentication finds it without
# knowing which RPC is running (docs/reference.md §4 "Permissions").
PERMISSION_ATTRIBUTE = "required_permission"
declared_permission: contextvars.ContextVar[str | None] = contextvars.ContextVar("declared_permission",
                                                                                default=None)


class InProcessContext:
    """Marker base of the in-process servicer context (see inproc.py)."""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()


REQUEST_ID_KEY = "x-request-id"


async def send_headers(context: Any, *headers: tuple[str, str]) -> None:
    """Sends the response headers of an RPC, once: the request id Envoy generated and forwarded
    (sent back, it becomes a response header) and `headers`."""
    request_id = metadata_value(context, REQUEST_ID_KEY)
    sent = ((REQUEST_ID_KEY, request_id),) if request_id else ()
    if sent or headers:
        await context.send_initial_metadata(sent + headers)


async def abort(context: Any, error: GatewayError) -> None:
    """Ends the RPC with `error`; never returns."""
    if isinstance(context, InProcessContext):
        raise error
    metadata = error.trailing_metadata()
    request_id = request_id_var.get()
    if request_id:
        # Trailers-only errors become the HTTP headers: keep the request id on them too.
        metadata = (*metadata, ("x-request-id", request_id))
    await context.abort(error.kind.grpc_code, error.message, trailing_metadata=metadata)


def _as_gateway_error(exc: BaseException, name: str) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    log.exception("unhandled error in %s", name, exc_info=exc)
    return internal_error()


def _declare(permission: str | None) -> contextvars.Token[str | None] | None:
    # Undeclared methods (the internal services) leave it alone: an in-process call from a public
    # RPC must not hide what that RPC declared, even while a callee's stream is suspended.
    return None if permission is None else declared_permission.set(permission)


def _forget(token: contextvars.Token[str | None] | None) -> None:
    if token is not None:
        with contextlib.suppress(ValueError):  # a generator closed from another context (at GC)
            declared_permission.reset(token)


def rpc_method(fn: F) -> F:
    """Decorates a unary or server-streaming servicer method with the error policy, and exposes the
    permission it declares (`PERMISSION_ATTRIBUTE`) in `declared_permission` while it runs."""
    name = fn.__qualname__
    permission: str | None = getattr(fn, PERMISSION_ATTRIBUTE, None)
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def streaming(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            if type(request) is RefusedRequest:
                await abort(context, request.error)
            token = _declare(permission)
            try:
                # aclosing: a caller that stops early closes the inner generator now, not at GC.
                async with contextlib.aclosing(fn(self, request, context)) as items:
                    async for item in items:
                        yield item
            except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - the one catch-all of the servicer layer
                await abort(context, _as_gateway_error(exc, name))
            finally:
                _forget(token)
        return streaming  # type: ignore[return-value]

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        if type(request) is RefusedRequest:
            await abort(context, request.error)
        token = _declare(permission)
        try:
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001
            await abort(context, _as_gateway_error(exc, name))
        finally:
            _forget(token)
    return unary  # type: ignore[return-value]


# The current RPC's metadata as a dict, made once per call: grpc.aio builds a new tuple from its C
# array on every `invocation_metadata()`, and a request reads about ten values (docs/performance.md).
# A context variable: every RPC runs in its own task, so each sees only its own.
_metadata: contextvars.ContextVar[tuple[Any, dict[str, str | bytes]] | None] = contextvars.ContextVar(
    "rpc_metadata", default=None)


def metadata_value(context: Any, key: str) -> str | None:
    """One invocation metadata value (keys are lower case; the first of repeated ones), or None."""
    if isinstance(context, InProcessContext):  # an in-process call's few values: no cache to thrash
        for k, v in context.invocation_metadata() or ():
            if k == key:
                return v if isinstance(v, str) else v.decode()
        return None
    cached = _metadata.get()
    if cached is None or cached[0] is not context:
        values: dict[str, str | bytes] = {}
        for k, v in context.invocation_metadata() or ():
            values.setdefault(k, v)
        cached = (context, values)
        _metadata.set(cached)
    value = cached[1].get(key)
    return value if value is None or isinstance(value, str) else value.decode()
