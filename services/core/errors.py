"""The gateway's one error type and the one table that maps it onto every wire.

    Exception
     └── GatewayError(reason, message, param=None, retry_after=None)
           reason ∈ Reason: one row of ERROR_TABLE gives the gRPC code, the HTTP status and the
           OpenAI `type`/`code` of the error JSON.

Errors cross process boundaries as a gRPC status whose details hold a `google.rpc.ErrorInfo`
(reason, domain "aggregator", metadata) and, for the HTTP edge, trailing metadata holding the
final OpenAI error JSON (`x-openai-error`) and HTTP status (`x-http-status`), which Envoy's Lua
shaper turns into the response. `from_rpc_error` is the only place that reads a gRPC error back.
Unknown exceptions become INTERNAL, are logged once by the caller, and leak no detail.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from services.core import limits

DOMAIN = "aggregator"
ERROR_JSON_KEY = "x-openai-error"
HTTP_STATUS_KEY = "x-http-status"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# An error crosses gRPC as trailing metadata three times over (the OpenAI JSON, grpc-message and the
# status details), and a proxy or client refuses metadata past a few KiB: a message echoing a huge
# client value must never grow with it (docs/edge.md, "Bounded errors").
MAX_MESSAGE_BYTES = 1024  # UTF-8 bytes of a message; longer ones are cut and end with "…"
MAX_PARAM_CHARS = 200
QUOTE_CHARS = 64  # at most this much of a client's value is quoted back


class Reason(enum.StrEnum):
    """Why a request failed. Each value is an `ErrorInfo.reason` (UPPER_SNAKE, per the AIPs)."""

    INVALID_REQUEST = "INVALID_REQUEST"
    MISSING_API_KEY = "MISSING_API_KEY"
    INVALID_API_KEY = "INVALID_API_KEY"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"
    UNSUPPORTED_PARAMETER = "UNSUPPORTED_PARAMETER"
    UPSTREAM_BAD_REQUEST = "UPSTREAM_BAD_REQUEST"
    UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED"
    UPSTREAM_AUTH_FAILED = "UPSTREAM_AUTH_FAILED"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_OVERLOADED = "UPSTREAM_OVERLOADED"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAVAILABLE = "UNAVAILABLE"
    SERVICE_UNAUTHENTICATED = "SERVICE_UNAUTHENTICATED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One row of the table: how a reason shows on each wire."""

    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str
    openai_code: str | None
    retriable: bool = False  # whether routing may try the next candidate


_C = grpc.StatusCode
ERROR_TABLE: dict[Reason, ErrorKind] = {
    Reason.INVALID_REQUEST: ErrorKind(_C.INVALID_ARGUMENT, 400, "invalid_request_error", None),
    Reason.MISSING_API_KEY: ErrorKind(_C.UNAUTHENTICATED, 401, "invalid_request_error", "missing_api_key"),
    Reason.INVALID_API_KEY: ErrorKind(_C.UNAUTHENTICATED, 401, "invalid_request_error", "invalid_api_key"),
    # A wrong email or password, or an unknown, spent or revoked refresh token
    # (docs/reference.md §4 "People").
    Reason.INVALID_CREDENTIALS: ErrorKind(_C.UNAUTHENTICATED, 401, "invalid_request_error",
                                          "invalid_credentials"),
    # The credential lacks a permission the endpoint declares; the message names it
    # (services/auth/permissions.py, docs/reference.md §4 "Permissions").
    Reason.PERMISSION_DENIED: ErrorKind(_C.PERMISSION_DENIED, 403, "permission_error", "permission_denied"),
    Reason.MODEL_NOT_ALLOWED: ErrorKind(_C.PERMISSION_DENIED, 403, "permission_error", "model_not_allowed"),
    Reason.MODEL_NOT_FOUND: ErrorKind(_C.NOT_FOUND, 404, "invalid_request_error", "model_not_found"),
    Reason.NOT_FOUND: ErrorKind(_C.NOT_FOUND, 404, "invalid_request_error", "not_found"),
    # RESOURCE_EXHAUSTED is gRPC's own code for a message over a size limit; the ErrorInfo tells it
    # from RESPONSE_TOO_LARGE (a bare RESOURCE_EXHAUSTED is read as that, below).
    Reason.REQUEST_TOO_LARGE: ErrorKind(
        _C.RESOURCE_EXHAUSTED, 413, "invalid_request_error", "request_too_large"
    ),
    Reason.RATE_LIMITED: ErrorKind(_C.RESOURCE_EXHAUSTED, 429, "rate_limit_error", "rate_limit_exceeded"),
    Reason.QUOTA_EXCEEDED: ErrorKind(_C.RESOURCE_EXHAUSTED, 429, "insufficient_quota", "insufficient_quota"),
    Reason.CONTEXT_LENGTH_EXCEEDED: ErrorKind(
        _C.INVALID_ARGUMENT, 400, "invalid_request_error", "context_length_exceeded"
    ),
    # A candidate cannot honour a parameter: routing tries the next one and reports this when
    # none can (skippable, not retriable: the same provider would refuse again).
    Reason.UNSUPPORTED_PARAMETER: ErrorKind(_C.INVALID_ARGUMENT, 400, "invalid_request_error",
                                            "unsupported_parameter"),
    Reason.UPSTREAM_BAD_REQUEST: ErrorKind(_C.INVALID_ARGUMENT, 400, "invalid_request_error", None),
    Reason.UPSTREAM_RATE_LIMITED: ErrorKind(
        _C.RESOURCE_EXHAUSTED, 429, "rate_limit_error", "upstream_rate_limited", retriable=True
    ),
    Reason.UPSTREAM_AUTH_FAILED: ErrorKind(
        _C.UNAVAILABLE, 502, "upstream_error", "upstream_auth_failed", retriable=True
    ),
    Reason.UPSTREAM_ERROR: ErrorKind(_C.UNAVAILABLE, 502, "upstream_error", "upstream_error", retriable=True),
    Reason.UPSTREAM_UNAVAILABLE: ErrorKind(
        _C.UNAVAILABLE, 503, "upstream_error", "upstream_unavailable", retriable=True
    ),
    Reason.UPSTREAM_OVERLOADED: ErrorKind(
        _C.UNAVAILABLE, 503, "upstream_error", "upstream_overloaded", retriable=True
    ),
    Reason.UPSTREAM_TIMEOUT: ErrorKind(
        _C.DEADLINE_EXCEEDED, 504, "upstream_error", "upstream_timeout", retriable=True
    ),
    # An answer larger than a size limit of ours (docs/edge.md): no other candidate would do better.
    Reason.RESPONSE_TOO_LARGE: ErrorKind(
        _C.RESOURCE_EXHAUSTED, 502, "server_error", "response_too_large"
    ),
    Reason.UNIMPLEMENTED: ErrorKind(_C.UNIMPLEMENTED, 501, "invalid_request_error", "not_implemented"),
    Reason.UNAVAILABLE: ErrorKind(_C.UNAVAILABLE, 503, "server_error", "service_unavailable"),
    # An internal RPC without the deployment's service token (services/core/service_token.py). Only
    # a process of ours calls internal services: should one lack the token, its client sees a
    # server error, not a complaint about its own API key.
    Reason.SERVICE_UNAUTHENTICATED: ErrorKind(_C.UNAUTHENTICATED, 500, "server_error", "internal_error"),
    Reason.INTERNAL: ErrorKind(_C.INTERNAL, 500, "server_error", "internal_error"),
}


def quote(value: str, mark: str = "'", limit: int = QUOTE_CHARS) -> str:
    """A value the client sent, as an error message shows it: between `mark`s (OpenAI writes model
    ids in backticks), and only its first `limit` characters, with its length, when it is longer."""
    if len(value) <= limit:
        return f"{mark}{value}{mark}"
    return f"{mark}{value[:limit]}…{mark} ({len(value)} characters)"


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message` cut to at most `limit` UTF-8 bytes (at a character boundary, ending with "…")."""
    if len(message) * 4 <= limit:  # cheap: no character is wider than 4 bytes
        return message
    raw = message.encode("utf-8", "replace")
    if len(raw) <= limit:
        return message
    return raw[: limit - 3].decode("utf-8", "ignore") + "…"


class GatewayError(Exception):
    """The one error of the gateway. `message` is shown to clients: never put secrets in it."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = bounded(message)
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.param = param if param is None or len(param) <= MAX_PARAM_CHARS else param[:MAX_PARAM_CHARS]
        self.code = code  # overrides the table's OpenAI code (e.g. an upstream's own code)
        self.retry_after = retry_after

    @property
    def kind(self) -> ErrorKind:
        return ERROR_TABLE[self.reason]

    @property
    def http_status(self) -> int:
        return self.kind.http_status

    @property
    def retriable(self) -> bool:
        return self.kind.retriable

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error object: {"error": {message, type, param, code}}."""
        kind = self.kind
        return {
            "error": {
                "message": self.message,
                "type": kind.openai_type,
                "param": self.param,
                "code": self.code if self.code is not None else kind.openai_code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_openai())

    def _ascii_json(self) -> str:
        """The error JSON as a legal gRPC text-metadata value (printable ASCII only): messages echo
        client input such as model ids, and one non-ASCII byte makes gRPC drop the whole error."""
        text = json.dumps(self.to_openai(), ensure_ascii=True, separators=(",", ":"))
        return text.replace("\x7f", "\\u007f")  # DEL is ASCII but not a legal header character

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Trailing metadata that carries this error across gRPC, for Envoy and for our clients."""
        info = error_details_pb2.ErrorInfo(reason=self.reason.value, domain=DOMAIN)
        if self.param is not None:
            info.metadata["param"] = self.param
        if self.code is not None:
            info.metadata["code"] = self.code
        if self.retry_after is not None:
            info.metadata["retry_after"] = f"{self.retry_after:g}"
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=self.kind.grpc_code.value[0], message=self.message, details=[detail])
        metadata: list[tuple[str, str | bytes]] = [
            (ERROR_JSON_KEY, self._ascii_json()),
            (HTTP_STATUS_KEY, str(self.http_status)),
            (STATUS_DETAILS_KEY, status.SerializeToString()),
        ]
        if self.retry_after is not None:
            # Round up: a client told to retry before the window resets only earns another 429.
            metadata.append(("retry-after", str(max(1, math.ceil(self.retry_after)))))
        return tuple(metadata)

    def __repr__(self) -> str:
        return f"GatewayError({self.reason.value}, {self.message!r})"


def internal_error() -> GatewayError:
    """The error shown for any unexpected exception: no detail leaks."""
    return GatewayError(Reason.INTERNAL, "The server had an error while processing your request.")


def response_too_large(limit: int) -> GatewayError:
    """The error of an answer over one of our size limits, naming the limit."""
    return GatewayError(
        Reason.RESPONSE_TOO_LARGE,
        f"The answer is larger than the gateway's limit of {limits.describe(limit)} for one answer.",
    )


# Every rate limit or quota of ours carries its ErrorInfo, so a bare RESOURCE_EXHAUSTED is gRPC's
# own: a message over the size limit of a channel.
_CODE_FALLBACK: dict[grpc.StatusCode, Reason] = {
    _C.INVALID_ARGUMENT: Reason.INVALID_REQUEST,
    _C.UNAUTHENTICATED: Reason.INVALID_API_KEY,
    _C.PERMISSION_DENIED: Reason.PERMISSION_DENIED,
    _C.NOT_FOUND: Reason.NOT_FOUND,
    _C.RESOURCE_EXHAUSTED: Reason.RESPONSE_TOO_LARGE,
    _C.UNIMPLEMENTED: Reason.UNIMPLEMENTED,
    _C.UNAVAILABLE: Reason.UNAVAILABLE,
    _C.DEADLINE_EXCEEDED: Reason.UPSTREAM_TIMEOUT,
}


def reason_for_code(code: grpc.StatusCode) -> Reason:
    """The reason a bare gRPC code stands for, when no ErrorInfo says better."""
    return _CODE_FALLBACK.get(code, Reason.INTERNAL)


def from_rpc_error(error: grpc.aio.AioRpcError) -> GatewayError:
    """Reads a remote service's error back into a GatewayError (the one place that does)."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == DOMAIN and info.reason in Reason.__members__:
                    retry = info.metadata.get("retry_after")
                    return GatewayError(
                        Reason(info.reason),
                        status.message,
                        param=info.metadata.get("param"),
                        code=info.metadata.get("code"),
                        retry_after=float(retry) if retry else None,
                    )
    return error_for_code(error.code(), error.details() or "")


def error_for_code(code: grpc.StatusCode, details: str) -> GatewayError:
    """The error a bare gRPC status stands for (no ErrorInfo of ours): gRPC's own text shows only
    where it is the service's message for a known code."""
    reason = reason_for_code(code)
    if reason is Reason.INTERNAL:
        return internal_error()
    if reason is Reason.RESPONSE_TOO_LARGE:
        return response_too_large(limits.MAX_GRPC_MESSAGE_BYTES)
    return GatewayError(reason, details or reason.value)
