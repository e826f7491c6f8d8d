"""The Envoy edge (DESIGN.md §3): its bootstrap, rendered from our settings, and its process.

One listener speaks HTTP/1.1 and HTTP/2 cleartext. Its filters, in order:

1. the Lua error shaper (`envoy/error_shaper.lua`): for HTTP clients it turns a failed RPC's
   trailing metadata (`x-openai-error`, `x-http-status`) into the OpenAI error response and strips
   gRPC plumbing from every response; native gRPC passes untouched;
2. the gRPC-JSON transcoder: HTTP/JSON to the typed RPCs of every `aggregator.*` service that has
   `google.api.http` bindings; `application/grpc` requests pass through to any service;
3. the router, to one HTTP/2 cluster of the services' gRPC ports.

Envoy's own replies (malformed JSON, wrong field type, unknown path, body too large, no upstream)
are rewritten into OpenAI error JSON by `local_reply_config`, in our own words.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

MAX_REQUEST_BYTES = 10 * 1024 * 1024
UPSTREAM_CLUSTER = "aggregator_grpc"
# A stream may stay quiet for a long time (a reasoning model thinking before its first token), so
# no route timeout applies and the idle limit is generous.
STREAM_IDLE_TIMEOUT = "600s"
_T = "@type"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def transcoded_services(descriptor_path: Path) -> list[str]:
    """Every `aggregator.*` service of the descriptor set with at least one `google.api.http` binding."""
    files = descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor_path).read_bytes()).file
    services = []
    for file in files:
        if not file.package.startswith("aggregator."):
            continue
        for service in file.service:
            if any(_has_http_rule(method) for method in service.method):
                services.append(f"{file.package}.{service.name}")
    return sorted(services)


def _has_http_rule(method: descriptor_pb2.MethodDescriptorProto) -> bool:
    # The descriptor set was parsed without the annotations registered as extensions, so the
    # option lives in the unknown fields; re-parsing the options resolves it.
    options = descriptor_pb2.MethodOptions.FromString(method.options.SerializeToString())
    return options.HasExtension(annotations_pb2.http)


# --- local replies ---------------------------------------------------------------------------------


def _openai_error(message: str, error_type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"json_format": {"error": {"message": message, "type": error_type, "param": param, "code": code}},
            "content_type": "application/json"}


def _status_is(code: int) -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": code,
                                                                       "runtime_key": "_"}}}}


def _status_at_least(code: int) -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": code,
                                                                       "runtime_key": "_"}}}}


def _details_contain(text: str) -> dict[str, Any]:
    # CEL over the response code details: the transcoder names its failures there, which is the
    # only way to tell a parse error from a body that is too large when both could share a status.
    return {"extension_filter": {
        "name": "envoy.access_loggers.extension_filters.cel",
        "typed_config": {_T: "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                         "expression": f"response.code_details.contains('{text}')"}}}


_IS_GRPC = {"header_filter": {"header": {"name": "content-type",
                                          "string_match": {"prefix": "application/grpc"}}}}
_NOT_GRPC = {"header_filter": {"header": {"name": "content-type", "string_match": {"prefix": "application/grpc"},
                                           "invert_match": True}}}


def _and(*filters: dict[str, Any]) -> dict[str, Any]:
    return {"and_filter": {"filters": list(filters)}}


def _local_reply_config(max_request_bytes: int) -> dict[str, Any]:
    """OpenAI error JSON for every reply Envoy makes itself; first matching mapper wins."""
    request_url = "Invalid URL (%REQ(:METHOD)% %REQ(:PATH)%)"
    rows: list[tuple[dict[str, Any], int | None, dict[str, Any]]] = [
        (_status_is(413), None, _openai_error(
            f"Request body too large: the limit is {max_request_bytes} bytes.",
            "invalid_request_error", "request_too_large")),
        (_status_is(404), None, _openai_error(request_url, "invalid_request_error", "unknown_url")),
        (_status_is(405), 404, _openai_error(request_url, "invalid_request_error", "unknown_url")),
        (_status_is(400), None, _openai_error(
            "We could not parse the JSON body of your request: it must be a JSON object whose fields have "
            "the types of the API reference.", "invalid_request_error", "invalid_json")),
        (_status_is(408), None, _openai_error("The request timed out.", "invalid_request_error", "timeout")),
        (_status_is(431), None, _openai_error("The request headers are too large.",
                                              "invalid_request_error", "headers_too_large")),
        (_status_is(504), None, _openai_error("The service did not answer in time. Please retry.",
                                              "server_error", "timeout")),
        (_status_at_least(500), 503, _openai_error("The service is temporarily unavailable. Please retry.",
                                                   "server_error", "service_unavailable")),
        (_status_at_least(400), None, _openai_error("The request could not be processed.",
                                                    "invalid_request_error", None)),
    ]
    mappers: list[dict[str, Any]] = [
        # Native gRPC clients read the status; keep Envoy's text out of grpc-message too.
        {"filter": _and(_IS_GRPC, _status_at_least(500)),
         "body": {"inline_string": "The service is temporarily unavailable."}},
        {"filter": _IS_GRPC, "body": {"inline_string": "The request could not be processed."}},
    ]
    for status_filter, status_override, body_format in rows:
        mapper: dict[str, Any] = {"filter": _and(_NOT_GRPC, status_filter), "body_format_override": body_format}
        if status_override is not None:
            mapper["status_code"] = status_override
        mappers.append(mapper)
    return {"mappers": mappers}


# --- the bootstrap ---------------------------------------------------------------------------------

ACCESS_LOG_FORMAT = {
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS_NUMBER%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESPONSE_DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "upstream": "%UPSTREAM_HOST%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
}


def _access_log(path: str | None) -> list[dict[str, Any]]:
    # The format names every field explicitly: headers such as authorization never appear.
    log_format = {"json_format": ACCESS_LOG_FORMAT}
    if path is None:
        return [{"name": "envoy.access_loggers.stdout", "typed_config": {
            _T: "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": log_format}}]
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        _T: "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path, "log_format": log_format}}]


def _http_filters(*, descriptor_path: Path, lua_path: Path, max_request_bytes: int) -> list[dict[str, Any]]:
    return [
        {"name": "envoy.filters.http.lua", "typed_config": {
            _T: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"filename": str(lua_path)}}},
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": {
            _T: "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(descriptor_path),
            "services": transcoded_services(descriptor_path),
            "print_options": {"add_whitespace": False, "always_print_primitive_fields": True,
                              "preserve_proto_field_names": True},
            "convert_grpc_status": True,
            "request_validation_options": {"reject_unknown_method": True,
                                           "reject_unknown_query_parameters": False},
            "max_request_body_size": max_request_bytes}},
        {"name": "envoy.filters.http.router", "typed_config": {
            _T: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "suppress_envoy_headers": True}},
    ]


def _route_config() -> dict[str, Any]:
    return {"name": "edge", "virtual_hosts": [{
        "name": "aggregator", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {
            "cluster": UPSTREAM_CLUSTER, "timeout": "0s", "idle_timeout": STREAM_IDLE_TIMEOUT,
            # Only failures where the request never reached a service are retried: safe for POST.
            "retry_policy": {"retry_on": "connect-failure,refused-stream", "num_retries": 2,
                             "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                                       "typed_config": {
                                                           _T: "type.googleapis.com/envoy.extensions.retry."
                                                               "host.previous_hosts.v3.PreviousHostsPredicate"}}],
                             "host_selection_retry_max_attempts": 3}}}]}]}


def _connection_manager(*, descriptor_path: Path, lua_path: Path, max_request_bytes: int,
                        access_log_path: str | None) -> dict[str, Any]:
    return {
        _T: _HCM,
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "use_remote_address": True,
        # No client address is trusted: Envoy always makes the request id itself, because usage events
        # are deduplicated by it and a client-chosen id could collide with another request's.
        "early_header_mutation_extensions": [{
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {_T: "type.googleapis.com/envoy.extensions.http.early_header_mutation."
                                 "header_mutation.v3.HeaderMutation",
                             "mutations": [{"remove": "x-request-id"}]}}],
        "always_set_request_id_in_response": True,
        "server_header_transformation": "PASS_THROUGH",
        "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
        "request_headers_timeout": "10s",
        "common_http_protocol_options": {"idle_timeout": "300s", "headers_with_underscores_action": "REJECT_REQUEST"},
        "http2_protocol_options": {"max_concurrent_streams": 1024},
        "access_log": _access_log(access_log_path),
        "local_reply_config": _local_reply_config(max_request_bytes),
        "route_config": _route_config(),
        "http_filters": _http_filters(descriptor_path=descriptor_path, lua_path=lua_path,
                                      max_request_bytes=max_request_bytes),
    }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cluster(upstreams: list[tuple[str, int]]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                 for host, port in upstreams]
    return {
        "name": UPSTREAM_CLUSTER,
        "type": "STATIC" if all(_is_ip(host) for host, _ in upstreams) else "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": UPSTREAM_CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                _T: "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {
                    "max_concurrent_streams": 1024,
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}}}}},
        # Streams live for minutes: the default limit of 1024 concurrent requests is far too low.
        "circuit_breakers": {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000,
                                             "max_requests": 100000, "max_retries": 1000}]},
        "outlier_detection": {"split_external_local_origin_errors": True,
                              "consecutive_local_origin_failure": 3,
                              "consecutive_gateway_failure": 1000000,
                              "consecutive_5xx": 1000000},
    }


def render_bootstrap(*, http_port: int, admin_port: int, upstreams: list[tuple[str, int]],
                     descriptor_path: Path, lua_path: Path, listen_address: str = "0.0.0.0",
                     max_request_bytes: int = MAX_REQUEST_BYTES,
                     access_log_path: str | None = None) -> dict[str, Any]:
    """The Envoy bootstrap (static resources only) as a plain dict, ready for JSON or YAML."""
    if not upstreams:
        raise ValueError("at least one upstream gRPC address is required")
    connection_manager = _connection_manager(descriptor_path=Path(descriptor_path).resolve(),
                                             lua_path=Path(lua_path).resolve(),
                                             max_request_bytes=max_request_bytes,
                                             access_log_path=access_log_path)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "edge_http",
                "address": {"socket_address": {"address": listen_address, "port_value": http_port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": connection_manager}]}],
            }],
            "clusters": [_cluster(upstreams)],
        },
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            # No upstream hosts count as overloaded by default; keep Envoy from shedding on its own.
            "overload.global_downstream_max_connections": 50000}}]},
    }
