"""Catalog lookups, candidate order with fallbacks, and exact decimal strings."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aggregator.openai.v1 import model_pb2
from aggregator.routing.v1 import route_pb2
from services.core.errors import GatewayError, Reason
from services.core.money import decimal_str
from services.routing.catalog import Catalog, CatalogModel


def candidate(public: str, provider: str, upstream: str, price_in: str = "0.001", price_out: str = "0.002",
              model_type: str = "chat") -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(
        public_model=public, upstream_model=upstream, input_per_1k=price_in, output_per_1k=price_out,
        model_type=model_type,
        endpoint=route_pb2.Endpoint(provider=provider, kind="openai", base_url=f"http://{provider}"))


def model(model_id: str, model_type: str, *routes: tuple[str, str]) -> CatalogModel:
    return CatalogModel(model_id, model_type, 4096, 1_700_000_000,
                        tuple(candidate(model_id, p, u, model_type=model_type) for p, u in routes))


@pytest.fixture
def catalog() -> Catalog:
    return Catalog([
        model("gpt-4o-mini", "chat", ("openai", "gpt-4o-mini"), ("local", "llama")),
        model("small", "chat", ("local", "llama"), ("groq", "llama")),
        model("big", "chat", ("openai", "gpt-4o")),
        # A configured id that looks like a route id keeps its own definition.
        model("openai/gpt-4o", "chat", ("azure", "gpt-4o")),
        model("embed", "embedding", ("openai", "text-embedding-3-small")),
    ], [model_pb2.Provider(id="openai", object="provider", kind="openai")])


def keys(candidates: list[route_pb2.RouteCandidate]) -> list[tuple[str, str]]:
    return [(c.endpoint.provider, c.upstream_model) for c in candidates]


def test_configured_id_resolves_to_its_routes_in_order(catalog: Catalog) -> None:
    candidates = catalog.resolve("gpt-4o-mini", [], "chat")
    assert keys(candidates) == [("openai", "gpt-4o-mini"), ("local", "llama")]
    assert {c.public_model for c in candidates} == {"gpt-4o-mini"}


def test_provider_slash_upstream_id_resolves_to_that_route_only(catalog: Catalog) -> None:
    candidates = catalog.resolve("local/llama", [], "chat")
    assert keys(candidates) == [("local", "llama")]
    assert candidates[0].public_model == "local/llama"
    assert candidates[0].input_per_1k == "0.001" and candidates[0].endpoint.base_url == "http://local"
    # The configured model's own candidate is a separate message: not renamed.
    assert catalog.get("gpt-4o-mini").candidates[1].public_model == "gpt-4o-mini"


def test_route_id_inherits_type_and_context_window(catalog: Catalog) -> None:
    direct = catalog.get("openai/text-embedding-3-small")
    assert (direct.type, direct.context_window, direct.created) == ("embedding", 4096, 1_700_000_000)


def test_configured_id_wins_over_a_route_id(catalog: Catalog) -> None:
    assert keys(catalog.resolve("openai/gpt-4o", [], "chat")) == [("azure", "gpt-4o")]


def test_models_lists_configured_and_route_ids(catalog: Catalog) -> None:
    ids = [m.id for m in catalog.models()]
    assert ids[:5] == ["gpt-4o-mini", "small", "big", "openai/gpt-4o", "embed"]
    assert set(ids[5:]) == {"openai/gpt-4o-mini", "local/llama", "groq/llama", "azure/gpt-4o",
                            "openai/text-embedding-3-small"}
    assert len(ids) == len(set(ids))
    assert [p.id for p in catalog.providers] == ["openai"]


def test_fallbacks_are_appended_in_order_without_duplicates(catalog: Catalog) -> None:
    candidates = catalog.resolve("gpt-4o-mini", ["small", "big", "local/llama", "gpt-4o-mini"], "chat")
    assert keys(candidates) == [("openai", "gpt-4o-mini"), ("local", "llama"), ("groq", "llama"),
                                ("openai", "gpt-4o")]
    assert [c.public_model for c in candidates] == ["gpt-4o-mini", "gpt-4o-mini", "small", "big"]


def test_fallback_by_route_id(catalog: Catalog) -> None:
    assert keys(catalog.resolve("big", ["groq/llama"], "chat")) == [("openai", "gpt-4o"), ("groq", "llama")]


@pytest.mark.parametrize(("model_id", "fallbacks"), [("nope", []), ("gpt-4o-mini", ["nope"]),
                                                     ("openai/nope", [])])
def test_unknown_model_is_model_not_found(catalog: Catalog, model_id: str, fallbacks: list[str]) -> None:
    with pytest.raises(GatewayError) as info:
        catalog.resolve(model_id, fallbacks, "chat")
    error = info.value
    assert error.reason is Reason.MODEL_NOT_FOUND and error.param == "model" and error.http_status == 404
    assert "`" + (fallbacks or [model_id])[0] + "`" in error.message


def test_missing_model_is_invalid_request(catalog: Catalog) -> None:
    with pytest.raises(GatewayError) as info:
        catalog.resolve("", [], "chat")
    assert info.value.reason is Reason.INVALID_REQUEST and info.value.param == "model"


def test_embedding_model_on_chat_is_invalid_request(catalog: Catalog) -> None:
    with pytest.raises(GatewayError) as info:
        catalog.resolve("embed", [], "chat")
    error = info.value
    assert error.reason is Reason.INVALID_REQUEST and error.param == "model" and error.http_status == 400
    assert "embedding model" in error.message


def test_chat_model_on_embeddings_is_invalid_request(catalog: Catalog) -> None:
    with pytest.raises(GatewayError) as info:
        catalog.resolve("gpt-4o-mini", [], "embedding")
    assert info.value.reason is Reason.INVALID_REQUEST


def test_mismatched_fallback_names_the_models_parameter(catalog: Catalog) -> None:
    with pytest.raises(GatewayError) as info:
        catalog.resolve("gpt-4o-mini", ["embed"], "chat")
    assert info.value.reason is Reason.INVALID_REQUEST and info.value.param == "models"


def test_empty_model_type_skips_the_type_check(catalog: Catalog) -> None:
    candidates = catalog.resolve("embed", ["big"], "")
    assert keys(candidates) == [("openai", "text-embedding-3-small"), ("openai", "gpt-4o")]


def test_to_proto_uses_the_first_candidate() -> None:
    proto = model("gpt-4o-mini", "chat", ("openai", "gpt-4o-mini"), ("local", "llama")).to_proto()
    assert (proto.id, proto.object, proto.created, proto.owned_by, proto.type, proto.context_window) == (
        "gpt-4o-mini", "model", 1_700_000_000, "openai", "chat", 4096)
    assert (proto.pricing.input_per_1k, proto.pricing.output_per_1k) == ("0.001", "0.002")


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("0.0001500000"), "0.00015"),
    (Decimal("0E-10"), "0"),
    (Decimal("12"), "12"),
    (Decimal("100"), "100"),
    (Decimal("1.2E+2"), "120"),
    (Decimal("0.5"), "0.5"),
    (Decimal("10.0"), "10"),
    (Decimal("2E-8"), "0.00000002"),
    (Decimal("0"), "0"),
    (Decimal("1234567.8900"), "1234567.89"),
])
def test_decimal_str(value: Decimal, text: str) -> None:
    assert decimal_str(value) == text
    assert Decimal(text) == value


def test_completions_run_on_chat_models_but_not_embedding_models(catalog: Catalog) -> None:
    assert keys(catalog.resolve("big", [], "completion")) == keys(catalog.resolve("big", [], "chat"))
    with pytest.raises(GatewayError) as caught:
        catalog.resolve("embed", [], "completion")
    assert caught.value.reason is Reason.INVALID_REQUEST


def test_models_list_their_providers_supported_parameters(catalog: Catalog) -> None:
    listed = {m.id: m.to_proto() for m in catalog.models()}
    supported = listed["big"].supported_parameters
    assert "temperature" in supported and "tools" in supported and "messages" not in supported
    assert list(listed["embed"].supported_parameters) == []
