"""What the edge does to responses for HTTP clients (docs/architecture.md §3, "The filter chain"):
the Lua error shaper, run only for responses that need it, and the removal of gRPC plumbing in C++.

Lua used to see every response: a coroutine per request and per response, and a streamed answer
passed a live coroutine waiting for its trailers. Now (docs/performance.md, "Envoy"):

- the composite filter creates the Lua shaper (`envoy/error_shaper.lua`) only when the response
  headers, as the transcoder leaves them, ask for it: an error status (4xx, 5xx), our error JSON
  (`x-openai-error`) or another success status (`x-http-status`, OAuth's 302). A plain success
  never meets Lua;
- the header mutation filter removes the gRPC plumbing from every response's headers and (HTTP/2
  clients see them) trailers: on a success, `grpc-accept-encoding` and the `grpc-status` and
  `grpc-message` trailers.

Native gRPC requests match their own routes before the transcoder runs, and both filters are
disabled there (`NATIVE_GRPC_ROUTE_CONFIG`): Envoy builds a request's filter chain from the route it
matched first, so a JSON request that the transcoder later routes like a gRPC one keeps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_T = "@type"
_EXTENSIONS = "type.googleapis.com/envoy.extensions"
_FILTERS = f"{_EXTENSIONS}.filters.http"
_MATCHERS = "type.googleapis.com/envoy.type.matcher.v3"
PLUMBING_FILTER_NAME = "envoy.filters.http.header_mutation"
ERROR_SHAPER_FILTER_NAME = "aggregator.error_shaper"

# Response headers (and trailers) no HTTP client should see; the Lua shaper's own list too.
PLUMBING = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-accept-encoding",
    "grpc-encoding",
    "x-openai-error",
    "x-http-status",
)


def plumbing_filter() -> dict[str, Any]:
    """The header mutation filter that strips PLUMBING from response headers and trailers.

    It comes first in the chain, so on the way back it runs last, after the Lua shaper read
    `x-openai-error` and `x-http-status`.
    """
    removals = [{"remove": key} for key in PLUMBING]
    return {
        "name": PLUMBING_FILTER_NAME,
        "typed_config": {
            _T: f"{_FILTERS}.header_mutation.v3.HeaderMutation",
            "mutations": {"response_mutations": removals, "response_trailers_mutations": removals},
        },
    }


def _response_header_present(name: str) -> dict[str, Any]:
    return {
        "single_predicate": {
            "input": {
                "name": name,
                "typed_config": {_T: f"{_MATCHERS}.HttpResponseHeaderMatchInput", "header_name": name},
            },
            "value_match": {"safe_regex": {"google_re2": {}, "regex": ".*"}},
        }
    }


def _status_class(value: str) -> dict[str, Any]:
    return {
        "single_predicate": {
            "input": {
                "name": "status_class",
                "typed_config": {_T: f"{_MATCHERS}.HttpResponseStatusCodeClassMatchInput"},
            },
            "value_match": {"exact": value},
        }
    }


def error_shaper_filter(lua_path: Path) -> dict[str, Any]:
    """The Lua shaper behind a composite filter: created only for a response that needs it.

    The match is made on the response headers, so the shaper sees the response from its headers
    on (its `envoy_on_request` never runs); it buffers error bodies, which are small.
    """
    lua = {
        "name": "envoy.filters.http.lua",
        "typed_config": {_T: f"{_FILTERS}.lua.v3.Lua", "default_source_code": {"filename": str(lua_path)}},
    }
    needs_shaping = {
        "or_matcher": {
            "predicate": [
                _status_class("4xx"),
                _status_class("5xx"),
                _response_header_present("x-openai-error"),
                _response_header_present("x-http-status"),
            ]
        }
    }
    action = {
        "name": "shape",
        "typed_config": {_T: f"{_FILTERS}.composite.v3.ExecuteFilterAction", "typed_config": lua},
    }
    return {
        "name": ERROR_SHAPER_FILTER_NAME,
        "typed_config": {
            _T: f"{_EXTENSIONS}.common.matching.v3.ExtensionWithMatcher",
            "extension_config": {
                "name": "envoy.filters.http.composite",
                "typed_config": {_T: f"{_FILTERS}.composite.v3.Composite"},
            },
            "xds_matcher": {
                "matcher_list": {"matchers": [{"predicate": needs_shaping, "on_match": {"action": action}}]}
            },
        },
    }


_DISABLED = {_T: "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
# typed_per_filter_config of the routes native gRPC requests match: nothing is changed for them.
NATIVE_GRPC_ROUTE_CONFIG = {PLUMBING_FILTER_NAME: _DISABLED, ERROR_SHAPER_FILTER_NAME: _DISABLED}
