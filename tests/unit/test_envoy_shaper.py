"""The edge's response shaping in the rendered bootstrap (services/runtime/envoy_shaper.py): Lua only
behind the composite filter, both shaping filters off for native gRPC and on for JSON requests."""

from __future__ import annotations

from typing import Any

from services.core.service_token import PUBLIC_GRPC_SERVICES
from services.runtime.envoy import DEFAULT_DESCRIPTOR_PATH, DEFAULT_LUA_PATH, render_bootstrap
from services.runtime.envoy_shaper import ERROR_SHAPER_FILTER_NAME, PLUMBING, PLUMBING_FILTER_NAME

SHAPING = {PLUMBING_FILTER_NAME, ERROR_SHAPER_FILTER_NAME}


def connection_manager() -> dict[str, Any]:
    bootstrap = render_bootstrap(http_port=1, admin_port=2, upstreams=[("127.0.0.1", 3)],
                                 descriptor_path=DEFAULT_DESCRIPTOR_PATH, lua_path=DEFAULT_LUA_PATH)
    listener = bootstrap["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def test_shaping_filters_come_first_and_lua_only_behind_the_composite_filter() -> None:
    filters = connection_manager()["http_filters"]
    # First in the chain: last on the way back, after the transcoder has made the response.
    assert [f["name"] for f in filters[:2]] == [PLUMBING_FILTER_NAME, ERROR_SHAPER_FILTER_NAME]
    assert all(f["name"] != "envoy.filters.http.lua" for f in filters)
    composite = filters[1]["typed_config"]
    assert composite["@type"].endswith("ExtensionWithMatcher")
    action = composite["xds_matcher"]["matcher_list"]["matchers"][0]["on_match"]["action"]
    assert action["typed_config"]["typed_config"]["name"] == "envoy.filters.http.lua"
    mutations = filters[0]["typed_config"]["mutations"]
    for key in ("response_mutations", "response_trailers_mutations"):
        assert {m["remove"] for m in mutations[key]} == set(PLUMBING)


def test_shaping_is_disabled_on_native_grpc_routes_only() -> None:
    routes = connection_manager()["route_config"]["virtual_hosts"][0]["routes"]
    grpc_routes = [r for r in routes if r["match"].get("headers")]
    assert len(grpc_routes) == len(PUBLIC_GRPC_SERVICES) + 1  # the public services and the 404
    for route in grpc_routes:
        per_filter = route["typed_per_filter_config"]
        assert all(per_filter[name]["disabled"] is True for name in SHAPING)
    json_route = routes[-1]
    assert not json_route["match"].get("headers")
    assert not SHAPING & set(json_route.get("typed_per_filter_config", {}))
