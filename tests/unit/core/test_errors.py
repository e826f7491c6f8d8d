"""The error table, the OpenAI error shape, and errors crossing gRPC as trailing metadata."""

from __future__ import annotations

import grpc
import orjson
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from services.core.errors import (
    DOMAIN,
    ERROR_JSON_KEY,
    ERROR_TABLE,
    HTTP_STATUS_KEY,
    MAX_MESSAGE_BYTES,
    QUOTE_CHARS,
    STATUS_DETAILS_KEY,
    GatewayError,
    Reason,
    from_rpc_error,
    internal_error,
    quote,
)

_C = grpc.StatusCode
GENERIC = "The server had an error while processing your request."


def rpc_error(code: grpc.StatusCode, pairs: tuple = (), details: str | None = None) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, initial_metadata=grpc.aio.Metadata(),
                                trailing_metadata=grpc.aio.Metadata(*pairs), details=details)


def metadata_dict(error: GatewayError) -> dict[str, str | bytes]:
    pairs = error.trailing_metadata()
    assert len({k for k, _ in pairs}) == len(pairs), "each key once"
    return dict(pairs)


def decoded_status(error: GatewayError) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    raw = metadata_dict(error)[STATUS_DETAILS_KEY]
    assert isinstance(raw, bytes)
    status = status_pb2.Status.FromString(raw)
    assert len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status, info


# --- the table ---------------------------------------------------------------------------------

def test_every_reason_has_exactly_one_row() -> None:
    assert set(ERROR_TABLE) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason))
def test_rows_are_consistent(reason: Reason) -> None:
    kind = ERROR_TABLE[reason]
    assert reason.value == reason.name  # ErrorInfo.reason is UPPER_SNAKE and equals the member name
    assert 400 <= kind.http_status <= 599
    assert kind.grpc_code is not grpc.StatusCode.OK
    assert kind.openai_type
    # Only upstream failures may move routing to the next candidate; a client's own mistake may not.
    expected_retriable = reason.name.startswith("UPSTREAM_") and reason is not Reason.UPSTREAM_BAD_REQUEST
    assert kind.retriable is expected_retriable


@pytest.mark.parametrize(("reason", "http", "grpc_code", "openai_type", "openai_code"), [
    (Reason.INVALID_REQUEST, 400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error", None),
    (Reason.INVALID_API_KEY, 401, _C.UNAUTHENTICATED, "invalid_request_error", "invalid_api_key"),
    (Reason.MODEL_NOT_FOUND, 404, grpc.StatusCode.NOT_FOUND, "invalid_request_error", "model_not_found"),
    (Reason.REQUEST_TOO_LARGE, 413, _C.RESOURCE_EXHAUSTED, "invalid_request_error", "request_too_large"),
    (Reason.RATE_LIMITED, 429, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_error", "rate_limit_exceeded"),
    (Reason.QUOTA_EXCEEDED, 429, _C.RESOURCE_EXHAUSTED, "insufficient_quota", "insufficient_quota"),
    (Reason.UPSTREAM_TIMEOUT, 504, grpc.StatusCode.DEADLINE_EXCEEDED, "upstream_error", "upstream_timeout"),
    (Reason.INTERNAL, 500, grpc.StatusCode.INTERNAL, "server_error", "internal_error"),
])
def test_selected_rows(reason: Reason, http: int, grpc_code: grpc.StatusCode, openai_type: str,
                       openai_code: str | None) -> None:
    error = GatewayError(reason, "m")
    assert (error.http_status, error.kind.grpc_code, error.kind.openai_type, error.kind.openai_code) == (
        http, grpc_code, openai_type, openai_code)


# --- the OpenAI shape --------------------------------------------------------------------------

def test_to_openai_shape_with_table_code() -> None:
    error = GatewayError(Reason.MODEL_NOT_FOUND, "The model `x` does not exist.", param="model")
    assert error.to_openai() == {"error": {"message": "The model `x` does not exist.",
                                           "type": "invalid_request_error", "param": "model",
                                           "code": "model_not_found"}}
    assert orjson.loads(error.to_json()) == error.to_openai()


def test_to_openai_null_param_and_code() -> None:
    body = GatewayError(Reason.INVALID_REQUEST, "bad").to_openai()
    assert list(body) == ["error"]
    assert body["error"] == {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}


def test_explicit_code_overrides_the_table() -> None:
    error = GatewayError(Reason.UPSTREAM_BAD_REQUEST, "no", param="tools", code="invalid_tool")
    assert error.to_openai()["error"]["code"] == "invalid_tool"
    assert error.http_status == 400


def test_properties_and_repr() -> None:
    error = GatewayError(Reason.UPSTREAM_OVERLOADED, "busy")
    assert error.kind is ERROR_TABLE[Reason.UPSTREAM_OVERLOADED]
    assert error.retriable and error.http_status == 503
    assert str(error) == "busy" and error.message == "busy"
    assert repr(error) == "GatewayError(UPSTREAM_OVERLOADED, 'busy')"


def test_internal_error_is_generic() -> None:
    error = internal_error()
    assert error.reason is Reason.INTERNAL and error.message == GENERIC and error.param is None


# --- trailing metadata -------------------------------------------------------------------------

def test_trailing_metadata_carries_json_status_and_details() -> None:
    error = GatewayError(Reason.RATE_LIMITED, "Slow down.", param="messages", code="tpm", retry_after=7)
    metadata = metadata_dict(error)
    assert set(metadata) == {ERROR_JSON_KEY, HTTP_STATUS_KEY, STATUS_DETAILS_KEY, "retry-after"}
    assert orjson.loads(metadata[ERROR_JSON_KEY]) == error.to_openai()
    assert metadata[HTTP_STATUS_KEY] == "429"
    assert metadata["retry-after"] == "7"
    status, info = decoded_status(error)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "Slow down."
    assert (info.reason, info.domain) == ("RATE_LIMITED", DOMAIN)
    assert dict(info.metadata) == {"param": "messages", "code": "tpm", "retry_after": "7"}


def test_trailing_metadata_without_optional_fields() -> None:
    error = GatewayError(Reason.INVALID_API_KEY, "Incorrect API key provided.")
    metadata = metadata_dict(error)
    assert "retry-after" not in metadata
    assert metadata[HTTP_STATUS_KEY] == "401"
    _, info = decoded_status(error)
    assert info.reason == "INVALID_API_KEY" and dict(info.metadata) == {}


@pytest.mark.parametrize(("seconds", "header"), [
    (0.2, "1"), (1, "1"), (1.0, "1"), (1.4, "2"), (2.5, "3"), (7, "7"), (29.01, "30"), (60.0, "60"),
])
def test_retry_after_header_is_whole_seconds_never_early(seconds: float, header: str) -> None:
    # A client told to come back before the window resets only earns another 429: round up.
    metadata = metadata_dict(GatewayError(Reason.UPSTREAM_RATE_LIMITED, "wait", retry_after=seconds))
    assert metadata["retry-after"] == header


@pytest.mark.parametrize("message", ["The model `gpté-ü` does not exist.", "line\u2028sep", "emoji 🚀",
                                     "del\x7f"])
def test_error_json_metadata_is_legal_ascii_header(message: str) -> None:
    # gRPC rejects non-ASCII in text metadata ("Illegal header value") and replaces the whole
    # error with INTERNAL; messages echo client input (model ids), so the value must be ASCII.
    value = metadata_dict(GatewayError(Reason.MODEL_NOT_FOUND, message, param="model"))[ERROR_JSON_KEY]
    assert isinstance(value, str)
    assert all(0x20 <= ord(c) <= 0x7E for c in value)
    assert orjson.loads(value)["error"]["message"] == message


# --- reading errors back -----------------------------------------------------------------------

@pytest.mark.parametrize("reason", list(Reason))
def test_round_trip_every_reason(reason: Reason) -> None:
    sent = GatewayError(reason, f"failed: {reason.value}", param="p", code="c", retry_after=2.5)
    received = from_rpc_error(rpc_error(sent.kind.grpc_code, sent.trailing_metadata(), sent.message))
    assert isinstance(received, GatewayError)
    assert (received.reason, received.message, received.param, received.code, received.retry_after) == (
        reason, sent.message, "p", "c", 2.5)
    assert received.to_openai() == sent.to_openai()


def test_round_trip_without_optional_fields() -> None:
    sent = GatewayError(Reason.MODEL_NOT_FOUND, "gone")
    received = from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, sent.trailing_metadata(), "gone"))
    assert (received.reason, received.param, received.code, received.retry_after) == (
        Reason.MODEL_NOT_FOUND, None, None, None)


def test_round_trip_prefers_the_status_message_over_grpc_details() -> None:
    sent = GatewayError(Reason.UPSTREAM_ERROR, "the real message")
    received = from_rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, sent.trailing_metadata(), "other"))
    assert received.message == "the real message"


def test_error_info_found_among_other_details() -> None:
    retry, info = any_pb2.Any(), any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo())
    info.Pack(error_details_pb2.ErrorInfo(reason="QUOTA_EXCEEDED", domain=DOMAIN))
    status = status_pb2.Status(code=8, message="quota", details=[retry, info])
    received = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        ((STATUS_DETAILS_KEY, status.SerializeToString()),), "quota"))
    assert received.reason is Reason.QUOTA_EXCEEDED and received.message == "quota"


@pytest.mark.parametrize(("domain", "reason"), [("googleapis.com", "RATE_LIMITED"),
                                                (DOMAIN, "NO_SUCH_REASON")])
def test_foreign_or_unknown_error_info_falls_back_to_the_code(domain: str, reason: str) -> None:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain))
    status = status_pb2.Status(code=5, message="x", details=[detail])
    received = from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND,
                                        ((STATUS_DETAILS_KEY, status.SerializeToString()),), "not here"))
    assert received.reason is Reason.NOT_FOUND and received.message == "not here"


@pytest.mark.parametrize(("code", "reason"), [
    (grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST),
    (grpc.StatusCode.UNAUTHENTICATED, Reason.INVALID_API_KEY),
    (grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED),
    (grpc.StatusCode.NOT_FOUND, Reason.NOT_FOUND),
    (grpc.StatusCode.UNIMPLEMENTED, Reason.UNIMPLEMENTED),
    (grpc.StatusCode.UNAVAILABLE, Reason.UNAVAILABLE),
    (grpc.StatusCode.DEADLINE_EXCEEDED, Reason.UPSTREAM_TIMEOUT),
])
def test_fallback_by_code_keeps_the_details(code: grpc.StatusCode, reason: Reason) -> None:
    received = from_rpc_error(rpc_error(code, (("unrelated", "x"),), "what the server said"))
    assert received.reason is reason and received.message == "what the server said"


def test_fallback_without_details_uses_the_reason_as_message() -> None:
    received = from_rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert received.reason is Reason.UNAVAILABLE and received.message == "UNAVAILABLE"


@pytest.mark.parametrize("code", [_C.INTERNAL, _C.UNKNOWN, _C.CANCELLED, _C.DATA_LOSS])
def test_unmapped_codes_become_internal_without_leaking_details(code: grpc.StatusCode) -> None:
    received = from_rpc_error(rpc_error(code, (), "Traceback ... password=hunter2"))
    assert received.reason is Reason.INTERNAL and received.message == GENERIC


def test_text_valued_details_key_is_ignored() -> None:
    # Only a binary value can be a serialized Status; anything else must not crash the reader.
    received = from_rpc_error(rpc_error(grpc.StatusCode.PERMISSION_DENIED, (("x-openai-error", "{}"),), "no"))
    assert received.reason is Reason.PERMISSION_DENIED


def test_bare_resource_exhausted_is_a_size_limit_not_a_rate_limit() -> None:
    # gRPC's own message-size failure: every rate limit of ours carries an ErrorInfo.
    received = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, (),
                                        "SERVER: Sent message larger than max (29627512 vs. 16777216)"))
    assert received.reason is Reason.RESPONSE_TOO_LARGE and received.http_status == 502
    assert "MiB" in received.message and "SERVER" not in received.message
    assert received.retry_after is None


def test_quote_keeps_a_short_prefix_of_long_values() -> None:
    assert quote("gpt-4o") == "'gpt-4o'"
    quoted = quote("m" * 19_000)
    assert quoted.startswith("'" + "m" * QUOTE_CHARS + "…'") and "19000 characters" in quoted
    assert len(quoted) < QUOTE_CHARS + 40


@pytest.mark.parametrize("text", ["x" * 50_000, "é" * 6_000, "😀" * 3_000, "a" + "😀" * 700])
def test_messages_are_bounded_in_bytes_whatever_the_characters(text: str) -> None:
    error = GatewayError(Reason.INVALID_REQUEST, text, param="p" * 10_000)
    assert len(error.message.encode()) <= MAX_MESSAGE_BYTES and error.message.endswith("…")
    assert len(error.param or "") <= 200
    assert text.startswith(error.message[:-1])
    # What crosses gRPC stays far below the 8 KiB that clients and proxies accept.
    total = sum(len(k) + len(v) for k, v in error.trailing_metadata())
    assert total + 3 * len(error.message.encode()) < 8 * 1024


def test_short_messages_are_untouched() -> None:
    assert GatewayError(Reason.INVALID_REQUEST, "é" * 200).message == "é" * 200
