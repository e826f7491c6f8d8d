"""Envoy's own replies (malformed JSON, wrong field type, unknown path, body too large, no
upstream) rewritten as OpenAI error JSON in our words, by `local_reply_config`."""

from __future__ import annotations

from typing import Any

from services.runtime.envoy_json_guard import DENIED_DETAILS_PREFIX

_T = "@type"
_EXTENSIONS = "type.googleapis.com/envoy.extensions"


def _status(op: str, code: int) -> dict[str, Any]:
    comparison = {"op": op, "value": {"default_value": code, "runtime_key": "_"}}
    return {"status_code_filter": {"comparison": comparison}}


# Envoy names the cause of each of its replies in the response code details; only CEL reads them.
def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                _T: f"{_EXTENSIONS}.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


# A native gRPC request: a gRPC content type that the transcoder did not set. The transcoder rewrites
# a JSON request into a gRPC one before any of its own replies, and marks it with
# x-envoy-original-method, which Envoy removes from every client's request first (envoy.py).
_IS_GRPC = _cel(
    "'content-type' in request.headers && request.headers['content-type'].startsWith('application/grpc')"
    " && !('x-envoy-original-method' in request.headers)"
)


# OpenAI's own words for a body it cannot read as JSON, minus the pointer to its help center.
NOT_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
    "JSON.)"
)
_NOT_JSON = _cel(f"response.code_details.startsWith('{DENIED_DETAILS_PREFIX}')")
_TRANSCODE_FAILURE = _cel("response.code_details.startsWith('grpc_json_transcode_failure')")
# A message from a service over the transcoder's buffer: the answer, not the service, is at fault.
_ANSWER_TOO_LARGE = _cel("response.code_details == 'response_payload_too_large'")
_INVALID, _SERVER = "invalid_request_error", "server_error"


def local_reply_config(max_request_bytes: int) -> dict[str, Any]:
    """OpenAI error JSON for every reply Envoy makes itself, in our words; the first match wins."""
    rows: list[tuple[dict[str, Any], int | None, str, str, str | None]] = [
        # (which replies, status sent instead, message, type, code)
        (
            _status("EQ", 413),
            None,
            f"Request body too large: the limit is {max_request_bytes} bytes.",
            _INVALID,
            "request_too_large",
        ),
        (_NOT_JSON, 400, NOT_JSON_MESSAGE, _INVALID, None),
        (_status("EQ", 404), None, "Invalid URL (%REQ(:METHOD)% %PATH(NQ)%)", _INVALID, "unknown_url"),
        (
            {"and_filter": {"filters": [_status("EQ", 400), _TRANSCODE_FAILURE]}},
            None,
            "We could not parse the JSON body of your request: it must be a JSON object whose fields "
            "have the types of the API reference.",
            _INVALID,
            "invalid_request_body",
        ),
        (_status("EQ", 400), None, "The request is malformed.", _INVALID, None),
        (_status("EQ", 408), None, "The request timed out.", _INVALID, "timeout"),
        (_status("EQ", 431), None, "The request headers are too large.", _INVALID, "headers_too_large"),
        (
            _ANSWER_TOO_LARGE,
            502,
            "The answer is larger than the gateway's size limit for one message.",
            _SERVER,
            "response_too_large",
        ),
        (_status("EQ", 504), None, "The service did not answer in time. Please retry.", _SERVER, "timeout"),
        (
            _status("GE", 500),
            503,
            "The service is temporarily unavailable. Please retry.",
            _SERVER,
            "service_unavailable",
        ),
        (_status("GE", 400), None, "The request could not be processed.", _INVALID, None),
    ]
    mappers: list[dict[str, Any]] = [
        # Native gRPC clients read the status; Envoy's text stays out of grpc-message too.
        {
            "filter": {"and_filter": {"filters": [_IS_GRPC, _status("GE", 500)]}},
            "body": {"inline_string": "The service is temporarily unavailable."},
        },
        {"filter": _IS_GRPC, "body": {"inline_string": "The request could not be processed."}},
    ]
    for when, status, message, error_type, code in rows:
        body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        mapper = {
            "filter": when,
            "body_format_override": {"json_format": body, "content_type": "application/json"},
        }
        mappers.append(mapper if status is None else {**mapper, "status_code": status})
    return {"mappers": mappers}
