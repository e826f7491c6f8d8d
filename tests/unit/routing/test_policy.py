"""Provider preferences, the `:floor` / `:nitro` suffixes and route weights (docs/routing.md §2, §3):
each rule changes the candidates, and a preference nothing satisfies is a 400 that says why."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from google.protobuf import struct_pb2

from aggregator.openai.v1 import model_pb2
from aggregator.routing.v1 import route_pb2
from aggregator.routing.v1 import routing_service_pb2 as pb
from services.core.errors import GatewayError, Reason
from services.routing import policy
from services.routing.catalog import Catalog, CatalogModel
from services.routing.health import Health
from services.routing.servicer import RoutingServicer


def route(provider: str, price_in: str = "0.001", price_out: str = "0.002", weight: int = 0,
          kind: str = "openai", model: str = "m") -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(
        public_model=model, upstream_model=f"{provider}-up", input_per_1k=price_in, output_per_1k=price_out,
        model_type="chat", weight=weight,
        endpoint=route_pb2.Endpoint(provider=provider, kind=kind, base_url=f"http://{provider}"))


# a: the configured first, dearest; b: cheapest; c: in between.
ROUTES = [route("a", "0.003", "0.006"), route("b", "0.0005", "0.001"), route("c", "0.001", "0.004")]


def names(candidates: list[route_pb2.RouteCandidate]) -> list[str]:
    return [c.endpoint.provider for c in candidates]


def choose(raw: dict[str, Any] | None, groups: list[list[route_pb2.RouteCandidate]] | None = None,
           suffix: str = "", health: dict[str, Health] | None = None, **kw: Any) -> list[str]:
    prefs = policy.parse(raw, suffix)
    return names(policy.apply("m", groups or [list(ROUTES)], prefs, health or {}, **kw))


def refused(raw: dict[str, Any], groups: list[list[route_pb2.RouteCandidate]] | None = None,
            **kw: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        choose(raw, groups, **kw)
    assert caught.value.reason is Reason.INVALID_REQUEST and caught.value.http_status == 400
    return caught.value


def test_no_preferences_keep_the_configured_order() -> None:
    assert choose(None) == ["a", "b", "c"]
    assert choose({}) == ["a", "b", "c"]
    assert choose({"order": None, "sort": None, "max_price": None}) == ["a", "b", "c"]  # null: absent


def test_sort_price_puts_the_cheapest_first() -> None:
    assert choose({"sort": "price"}) == ["b", "c", "a"]


def test_floor_suffix_sorts_by_price_and_an_explicit_sort_wins() -> None:
    assert policy.split_suffix("gpt-4o:floor") == ("gpt-4o", "price")
    assert policy.split_suffix("gpt-4o:nitro") == ("gpt-4o", "throughput")
    assert policy.split_suffix("gpt-4o") == ("gpt-4o", "")
    assert choose(None, suffix="price") == ["b", "c", "a"]
    health = {"c|http://c": Health(ttft_s=0.1), "a|http://a": Health(ttft_s=0.5)}
    assert choose({"sort": "latency"}, suffix="price", health=health) == ["c", "a", "b"]


def test_nitro_and_throughput_put_the_fastest_first_unmeasured_last() -> None:
    health = {"a|http://a": Health(tokens_per_s=40.0), "c|http://c": Health(tokens_per_s=120.0)}
    assert choose(None, suffix="throughput", health=health) == ["c", "a", "b"]
    assert choose({"sort": "throughput"}, health=health) == ["c", "a", "b"]


def test_max_price_is_usd_per_million_tokens_and_filters() -> None:
    # c charges $1 prompt and $4 completion per million; a $3 and $6; b $0.5 and $1.
    assert choose({"max_price": {"prompt": 1, "completion": 4}}) == ["b", "c"]
    assert choose({"max_price": {"completion": 1.0}}) == ["b"]
    assert choose({"max_price": {"prompt": 3}, "sort": "price"}) == ["b", "c", "a"]


def test_only_ignore_and_order() -> None:
    assert choose({"only": ["c", "a"]}) == ["a", "c"]
    assert choose({"ignore": ["a"]}) == ["b", "c"]
    assert choose({"order": ["c", "b"]}) == ["c", "b", "a"]
    assert choose({"order": ["c", "zzz"], "allow_fallbacks": False}) == ["c"]
    assert choose({"allow_fallbacks": False}) == ["a"]  # no order: only the primary


def test_rules_stay_inside_each_model_so_fallback_models_stay_fallbacks() -> None:
    fallback = [route("d", "0.0001", "0.0001", model="n"), route("b", model="n")]
    assert choose({"sort": "price"}, [list(ROUTES), fallback]) == ["b", "c", "a", "d", "b"]
    assert choose({"only": ["d"]}, [list(ROUTES), fallback]) == ["d"]


def test_unsatisfiable_preferences_are_400s_that_say_why() -> None:
    error = refused({"only": ["nobody"]})
    assert error.param == "provider.only"
    assert error.message == ("No provider of the model `m` is left by provider.only and provider.ignore "
                             "(the model's providers: a, b, c).")
    assert refused({"ignore": ["a", "b", "c"]}).param == "provider.ignore"
    error = refused({"max_price": {"prompt": 0.1}})
    assert error.param == "provider.max_price"
    assert error.message == ("No provider of the model `m` is priced within provider.max_price; the cheapest "
                             "charges $0.5 prompt and $1 completion per million tokens.")
    error = refused({"order": ["nobody"], "allow_fallbacks": False})
    assert error.param == "provider.order"
    assert error.message == ("None of the providers in provider.order serves the model `m` and "
                             "provider.allow_fallbacks is false (the model's providers: a, b, c).")
    error = refused({"require_parameters": True}, parameters=["logprobs"],
                    supported=lambda kind: ("temperature",))
    assert error.message == ("No provider of the model `m` supports every parameter of the request "
                             "(logprobs).")


def test_require_parameters_keeps_the_providers_that_support_them() -> None:
    groups = [[route("a", kind="anthropic"), route("b", kind="openai")]]
    supported = {"anthropic": ("temperature",), "openai": ("logprobs", "temperature")}
    assert choose({"require_parameters": True}, groups, parameters=["logprobs"],
                  supported=lambda kind: supported[kind]) == ["b"]
    assert choose({"require_parameters": False}, groups, parameters=["logprobs"],
                  supported=lambda kind: supported[kind]) == ["a", "b"]


@pytest.mark.parametrize(("raw", "param", "message"), [
    ({"sort": "fast"}, "provider.sort", "provider.sort must be one of price, latency, throughput."),
    ({"order": "a"}, "provider.order", "provider.order must be an array of provider names."),
    ({"allow_fallbacks": "no"}, "provider.allow_fallbacks", "provider.allow_fallbacks must be a boolean."),
    ({"max_price": {"prompt": -1}}, "provider.max_price.prompt",
     "provider.max_price.prompt must be a non-negative number (USD per million tokens)."),
    ({"max_price": {"request": 1}}, "provider.max_price.request",
     "provider.max_price.request is not supported; use `prompt` and `completion` (USD per million tokens)."),
    ({"quantizations": ["fp8"]}, "provider.quantizations",
     "Unrecognized provider preference 'quantizations'; supported: allow_fallbacks, ignore, max_price, only, "
     "order, require_parameters, sort."),
])
def test_malformed_preferences_are_400s(raw: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(GatewayError) as caught:
        policy.parse(raw)
    assert (caught.value.reason, caught.value.param, caught.value.message) == (Reason.INVALID_REQUEST, param,
                                                                               message)


def test_weights_share_1000_requests_within_a_few_percent() -> None:
    groups = [[route("a", weight=3), route("b", weight=1), route("c")]]
    rng = random.Random(20261204).random
    firsts = Counter(choose(None, groups, rng=rng)[0] for _ in range(1000))
    assert abs(firsts["a"] - 750) <= 40 and abs(firsts["b"] - 250) <= 40 and firsts["c"] == 0
    # Every candidate stays a fallback, the unweighted last.
    assert sorted(choose(None, groups, rng=rng)) == ["a", "b", "c"]
    assert choose(None, groups, rng=rng)[-1] == "c"


def test_weights_share_ties_of_a_sort() -> None:
    groups = [[route("a", "0.003", weight=1), route("b", "0.001", weight=1), route("c", "0.001", weight=1)]]
    rng = random.Random(7).random
    firsts = Counter(choose({"sort": "price"}, groups, rng=rng)[0] for _ in range(1000))
    assert firsts["a"] == 0 and abs(firsts["b"] - 500) <= 50 and abs(firsts["c"] - 500) <= 50


async def test_resolve_route_applies_the_request_preferences_and_suffix() -> None:
    servicer = RoutingServicer(None)  # type: ignore[arg-type]
    servicer._catalog = Catalog([CatalogModel("m", "chat", 0, 0, tuple(ROUTES))],
                                [model_pb2.Provider(id="a", object="provider", kind="openai")])
    provider = struct_pb2.Struct()
    provider.update({"ignore": ["b"]})
    answer = await servicer.ResolveRoute(pb.ResolveRouteRequest(model="m:floor", provider=provider), None)
    assert names(list(answer.candidates)) == ["c", "a"]
    answer = await servicer.ResolveRoute(pb.ResolveRouteRequest(model="m"), None)
    assert names(list(answer.candidates)) == ["a", "b", "c"]
    # A configured id that ends like a suffix is that model.
    servicer._catalog = Catalog([CatalogModel("m:floor", "chat", 0, 0, tuple(ROUTES))], [])
    answer = await servicer.ResolveRoute(pb.ResolveRouteRequest(model="m:floor"), None)
    assert names(list(answer.candidates)) == ["a", "b", "c"]


async def test_get_model_shows_each_endpoint_with_its_health() -> None:
    servicer = RoutingServicer(None)  # type: ignore[arg-type]
    routes = [route("a", weight=3), route("b", "0.0005", weight=1)]
    servicer._catalog = Catalog([CatalogModel("m", "chat", 0, 0, tuple(routes))], [])
    answer = await servicer.ListCatalogModels(pb.ListCatalogModelsRequest(id="m"), None)
    endpoints = answer.models[0].endpoints
    assert [(e.provider, e.model, e.weight, e.health.circuit) for e in endpoints] == [
        ("a", "a-up", 3, "closed"), ("b", "b-up", 1, "closed")]
    assert endpoints[1].pricing.input_per_1k == "0.0005"
    assert not endpoints[0].health.HasField("time_to_first_token_ms")  # unmeasured
    assert not (await servicer.ListCatalogModels(pb.ListCatalogModelsRequest(id="nope"), None)).models
    listed = await servicer.ListCatalogModels(pb.ListCatalogModelsRequest(), None)
    assert [m.id for m in listed.models] == ["m", "a/a-up", "b/b-up"] and not listed.models[0].endpoints
