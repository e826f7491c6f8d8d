"""The Envoy edge (docs/architecture.md §3): its bootstrap, rendered from our settings (the process that runs
it is `envoy_process.py`).

One listener speaks HTTP/1.1 and HTTP/2 cleartext. Its filters, in order:

1. response shaping for HTTP clients (`envoy_shaper.py`), disabled on the routes native gRPC
   requests match, so gRPC clients get everything untouched: a C++ header mutation filter strips
   the gRPC plumbing (`envoy_shaper.PLUMBING`) from every response's headers and trailers, and a
   composite filter creates the Lua error shaper (`envoy/error_shaper.lua`) only for a response that
   needs it (an error status, `x-openai-error`, `x-http-status`): it turns a failed RPC's trailing
   metadata into the OpenAI error response and applies a requested status (OAuth's 302). Lua stays
   off the success path: with it on every response (a coroutine per request and per response, and
   every streamed chunk passing one waiting for the trailers), Envoy spent 0.52 ms of CPU per
   non-streamed and 0.84 ms per streamed request; now 0.46 and 0.77, what it spends with no Lua at
   all (`python -m bench.run --concurrency 1`; docs/performance.md, "Envoy");
2. the buffer filter (the 10 MiB body limit) and the JSON guard (`envoy_json_guard.py`): strict
   JSON and a JSON Content-Type, as OpenAI requires, before the lenient transcoder;
3. the gRPC-JSON transcoder: HTTP/JSON to the typed RPCs of every `aggregator.*` service that has
   `google.api.http` bindings; `application/grpc` requests pass through;
4. the router, to HTTP/2 clusters of the services' gRPC ports; on native gRPC only the public
   services are routed (PUBLIC_GRPC_SERVICES).

Envoy's own replies (malformed JSON, wrong field type, unknown path, body too large, no upstream)
are rewritten into OpenAI error JSON by `local_reply_config`, in our own words.
"""

from __future__ import annotations

import base64
import ipaddress
import math
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2

from services.core.limits import MAX_REQUEST_BYTES
from services.core.service_token import PUBLIC_GRPC_SERVICES
from services.runtime.envoy_json_guard import json_to_metadata_filter, raw_body_paths, rbac_filter
from services.runtime.envoy_replies import local_reply_config
from services.runtime.envoy_shaper import NATIVE_GRPC_ROUTE_CONFIG, error_shaper_filter, plumbing_filter

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DESCRIPTOR_PATH = REPO / "gen" / "descriptor.pb"
DEFAULT_LUA_PATH = REPO / "envoy" / "error_shaper.lua"
UPSTREAM_CLUSTER = "aggregator_grpc"
# A stream may stay quiet for a long time (a reasoning model thinking before its first token), so
# the idle limit is generous. The route timeout is the gateway's request deadline (the longest
# `total_timeout_s`, docs/resilience.md §3) plus this margin, so the edge's own 504 comes first.
STREAM_IDLE_TIMEOUT = "600s"
ROUTE_TIMEOUT_MARGIN_S = 5
_T = "@type"
_EXTENSIONS = "type.googleapis.com/envoy.extensions"
_FILTERS = f"{_EXTENSIONS}.filters.http"
_HCM = f"{_EXTENSIONS}.filters.network.http_connection_manager.v3.HttpConnectionManager"


def transcoded_services(descriptor_set: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Every `aggregator.*` service of the descriptor set with at least one `google.api.http` binding."""
    services = []
    for file in descriptor_set.file:
        if not file.package.startswith("aggregator."):
            continue
        for service in file.service:
            # The import of annotations_pb2 registers the extension, so parsing resolved it.
            if any(method.options.HasExtension(annotations_pb2.http) for method in service.method):
                services.append(f"{file.package}.{service.name}")
    return sorted(services)


def transcoder_descriptor_set(descriptor_path: Path) -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set Envoy loads: ours, plus `google.rpc.Status` and `google.rpc.ErrorInfo`.

    The transcoder can only turn a failed RPC into a response while it still holds the response
    headers if it can print the status details to JSON, and our details hold an ErrorInfo. Without
    that type, a failure after the service sent its initial metadata would reach HTTP clients as an
    empty 200; with it, the status is converted and the Lua shaper swaps in the OpenAI error.
    """
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor_path).read_bytes())
    present = {file.name for file in descriptor_set.file}
    for extra in (status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR):
        _add_with_dependencies(descriptor_set, extra, present)
    return descriptor_set


def _add_with_dependencies(
    descriptor_set: descriptor_pb2.FileDescriptorSet, file: Any, present: set[str]
) -> None:
    if file.name in present:
        return
    for dependency in file.dependencies:
        _add_with_dependencies(descriptor_set, dependency, present)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    descriptor_set.file.append(proto)
    present.add(file.name)


# --- the bootstrap ---------------------------------------------------------------------------------

ACCESS_LOG_FORMAT = {
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
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
        return [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    _T: f"{_EXTENSIONS}.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": log_format,
                },
            }
        ]
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                _T: f"{_EXTENSIONS}.access_loggers.file.v3.FileAccessLog",
                "path": path,
                "log_format": log_format,
            },
        }
    ]


def _http_filters(*, descriptor_path: Path, lua_path: Path, max_request_bytes: int) -> list[dict[str, Any]]:
    descriptor_set = transcoder_descriptor_set(descriptor_path)
    return [
        plumbing_filter(),
        error_shaper_filter(lua_path),
        # The transcoder streams a body through without a size check, so the limit is the buffer
        # filter's: it answers 413 for Content-Length and chunked bodies alike. JSON requests are
        # single messages that the transcoder needs whole anyway.
        {
            "name": "envoy.filters.http.buffer",
            "typed_config": {_T: f"{_FILTERS}.buffer.v3.Buffer", "max_request_bytes": max_request_bytes},
        },
        json_to_metadata_filter(),
        rbac_filter(raw_body_paths(descriptor_set)),
        {
            "name": "envoy.filters.http.grpc_json_transcoder",
            "typed_config": {
                _T: f"{_FILTERS}.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                "proto_descriptor_bin": base64.b64encode(descriptor_set.SerializeToString()).decode(),
                "services": transcoded_services(descriptor_set),
                # Clients may encode the slashes of model ids ("openai%2Fgpt-4o").
                "url_unescape_spec": "ALL_CHARACTERS",
                # Query strings are form-encoded: "+" is a space (OAuth clients send scope=a+b).
                "query_param_unescape_plus": True,
                "print_options": {
                    "add_whitespace": False,
                    "always_print_primitive_fields": True,
                    "preserve_proto_field_names": True,
                },
                # A failure after the service's headers but before any message then still gets an error
                # status (the body, a google.rpc.Status, is replaced by the Lua shaper).
                "convert_grpc_status": True,
                "request_validation_options": {
                    "reject_unknown_method": True,
                    "reject_unknown_query_parameters": False,
                },
            },
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {_T: f"{_FILTERS}.router.v3.Router", "suppress_envoy_headers": True},
        },
    ]


def _route_action(cluster: str = UPSTREAM_CLUSTER, route_timeout_s: float = 0) -> dict[str, Any]:
    return {
        "cluster": cluster,
        # 0s: none (no deadline configured).
        "timeout": f"{math.ceil(route_timeout_s) + ROUTE_TIMEOUT_MARGIN_S}s" if route_timeout_s else "0s",
        "idle_timeout": STREAM_IDLE_TIMEOUT,
        # Only failures where the request never reached a service are retried: safe for POST.
        "retry_policy": {
            "retry_on": "connect-failure,refused-stream",
            "num_retries": 2,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        _T: f"{_EXTENSIONS}.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
        },
    }


# The services the public listener exposes to native gRPC clients (services/core/service_token.py).
# Internal services (auth's Authenticate, routing, adapter, billing) are reachable only on the
# services' own port, and there only with the service token.
_GRPC = [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}]
# Native gRPC streams (server reflection is bidirectional) must not wait for the end of the request,
# so the buffer filter that enforces the JSON body limit stays out of their way; the services' own
# message size limit applies to them.
# The response shaping for HTTP clients is off for them too (envoy_shaper.py).
_NATIVE_GRPC = {
    "envoy.filters.http.buffer": {_T: f"{_FILTERS}.buffer.v3.BufferPerRoute", "disabled": True},
    **NATIVE_GRPC_ROUTE_CONFIG,
}


def _service_cluster(prefix: str) -> str:
    return "svc_" + prefix.strip("/.").replace(".", "_")


def _cluster_of(service: str, service_prefixes: list[str]) -> str:
    prefix = next((p for p in service_prefixes if service.startswith(p)), None)
    return _service_cluster(prefix) if prefix else UPSTREAM_CLUSTER


def _route_config(service_prefixes: list[str], route_timeout_s: float = 0) -> dict[str, Any]:
    # The transcoder rewrites a JSON request's path to its gRPC method, sets content-type
    # application/grpc and clears the route cache, so JSON requests take the gRPC routes below
    # too (split topology: one cluster per service).
    public = [
        {
            "match": {"prefix": f"/{service}/", "headers": _GRPC},
            "route": _route_action(_cluster_of(service, service_prefixes), route_timeout_s),
            "typed_per_filter_config": _NATIVE_GRPC,
        }
        for service in PUBLIC_GRPC_SERVICES
    ]
    internal = {
        "match": {"prefix": "/", "headers": _GRPC},
        "direct_response": {"status": 404},
        "typed_per_filter_config": _NATIVE_GRPC,
    }
    json_requests = {"match": {"prefix": "/"}, "route": _route_action(UPSTREAM_CLUSTER, route_timeout_s)}
    return {
        "name": "edge",
        "virtual_hosts": [
            {"name": "aggregator", "domains": ["*"], "routes": [*public, internal, json_requests]}
        ],
    }


def _connection_manager(
    *,
    descriptor_path: Path,
    lua_path: Path,
    max_request_bytes: int,
    access_log_path: str | None,
    service_prefixes: list[str],
    route_timeout_s: float = 0,
) -> dict[str, Any]:
    return {
        _T: _HCM,
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "normalize_path": True,
        "use_remote_address": True,
        # Envoy always makes the request id itself, whoever the client is: usage events are
        # deduplicated by it, so a client-chosen id could hide another request's usage. The
        # transcoder's own marks are removed too: the services hold a request without
        # x-envoy-original-method (native gRPC) to the request size limit themselves
        # (services/core/server_guard.py), so a client must not be able to send it.
        "early_header_mutation_extensions": [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    _T: f"{_EXTENSIONS}.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    "mutations": [
                        {"remove": "x-request-id"},
                        {"remove": "x-envoy-original-method"},
                        {"remove": "x-envoy-original-path"},
                    ],
                },
            }
        ],
        "always_set_request_id_in_response": True,
        "server_header_transformation": "PASS_THROUGH",
        "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
        "request_headers_timeout": "10s",
        "common_http_protocol_options": {
            "idle_timeout": "300s",
            "headers_with_underscores_action": "DROP_HEADER",
        },
        "http2_protocol_options": {"max_concurrent_streams": 1024},
        "access_log": _access_log(access_log_path),
        "local_reply_config": local_reply_config(max_request_bytes),
        "route_config": _route_config(service_prefixes, route_timeout_s),
        "http_filters": _http_filters(
            descriptor_path=descriptor_path, lua_path=lua_path, max_request_bytes=max_request_bytes
        ),
    }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cluster(upstreams: list[tuple[str, int]], name: str = UPSTREAM_CLUSTER) -> dict[str, Any]:
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in upstreams
    ]
    return {
        "name": name,
        "type": "STATIC" if all(_is_ip(host) for host, _ in upstreams) else "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                _T: f"{_EXTENSIONS}.upstreams.http.v3.HttpProtocolOptions",
                # No HTTP/2 keepalive pings: gRPC servers answer frequent pings with GOAWAY.
                "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 1024}},
            }
        },
        # Streams live for minutes: the default limit of 1024 concurrent requests is far too low.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                    "max_retries": 1000,
                }
            ]
        },
    }


def render_bootstrap(
    *,
    http_port: int,
    admin_port: int,
    upstreams: list[tuple[str, int]],
    descriptor_path: Path,
    lua_path: Path,
    listen_address: str = "0.0.0.0",
    max_request_bytes: int = MAX_REQUEST_BYTES,
    access_log_path: str | None = None,
    service_upstreams: dict[str, list[tuple[str, int]]] | None = None,
    route_timeout_s: float = 0,
) -> dict[str, Any]:
    """The Envoy bootstrap (static resources only) as a plain dict, ready for JSON or YAML.

    `upstreams` serve every service by default; `service_upstreams` maps a gRPC name prefix
    (e.g. "aggregator.auth.v1.") to the addresses of the processes hosting it (split topology).
    `route_timeout_s`: the longest request deadline (`total_timeout_s`); 0 for none.
    """
    service_upstreams = service_upstreams or {}
    if not upstreams:
        raise ValueError("at least one upstream gRPC address is required")
    connection_manager = _connection_manager(
        descriptor_path=Path(descriptor_path).resolve(),
        lua_path=Path(lua_path).resolve(),
        max_request_bytes=max_request_bytes,
        access_log_path=access_log_path,
        service_prefixes=list(service_upstreams),
        route_timeout_s=route_timeout_s,
    )
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "edge_http",
                    "address": {"socket_address": {"address": listen_address, "port_value": http_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _cluster(upstreams),
                *(
                    _cluster(addresses, _service_cluster(prefix))
                    for prefix, addresses in service_upstreams.items()
                ),
            ],
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        _T: f"{_EXTENSIONS}.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
    }
