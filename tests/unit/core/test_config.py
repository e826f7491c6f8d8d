"""parse_config: the example file, every ConfigError branch, exact decimal prices."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.core.config import (
    PROVIDER_KINDS,
    Config,
    ConfigError,
    EdgeConfig,
    StoreUrls,
    config_path,
    data_dir,
    load_config,
    parse_config,
)

REPO_ROOT = Path(__file__).resolve().parents[3]

BASE: dict[str, Any] = {
    "providers": [
        {"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1/",
         "api_key_env": "OPENAI_KEY"},
        {"name": "local", "kind": "openai_compatible", "base_url": "http://127.0.0.1:1/v1"},
    ],
    "models": [
        {"id": "gpt-4o-mini", "type": "chat", "context_window": 128000, "routes": [
            {"provider": "openai", "model": "gpt-4o-mini",
             "input_per_1k": "0.00015", "output_per_1k": "0.0006"},
            {"provider": "local", "model": "llama", "input_per_1k": 0, "output_per_1k": 0},
        ]},
    ],
}


def raw(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def route(**changes: Any) -> dict[str, Any]:
    data = {"provider": "openai", "model": "m", "input_per_1k": "1", "output_per_1k": "2"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def with_route(r: dict[str, Any]) -> dict[str, Any]:
    return raw(models=[{"id": "x", "routes": [route(), r]}])


def test_example_file_in_repo_root_parses() -> None:
    config = load_config(REPO_ROOT / "aggregator.yaml")
    assert [p.name for p in config.providers] == ["openai", "anthropic", "google", "cohere", "local-vllm"]
    assert {p.kind for p in config.providers} == set(PROVIDER_KINDS)
    assert config.provider("openai").kind == "openai"  # type: ignore[union-attr]
    assert config.provider("local-vllm").api_key_env == ""  # type: ignore[union-attr]
    models = {m.id: m for m in config.models}
    assert set(models) == {"gpt-4o-mini", "claude-sonnet", "text-embedding-3-small", "dall-e-3"}
    assert models["claude-sonnet"].max_output_tokens == 8192
    assert models["dall-e-3"].routes[0].per_image == Decimal("0.04")
    chat = models["gpt-4o-mini"]
    assert chat.type == "chat" and chat.context_window == 128000
    assert [(r.provider, r.model) for r in chat.routes] == [
        ("openai", "gpt-4o-mini"), ("local-vllm", "meta-llama/Llama-3.1-8B-Instruct")]
    assert chat.routes[0].input_per_1k == Decimal("0.00015") and str(chat.routes[0].input_per_1k) == "0.00015"
    assert str(chat.routes[0].output_per_1k) == "0.0006"
    assert chat.routes[1].input_per_1k == 0
    assert str(models["text-embedding-3-small"].routes[0].input_per_1k) == "0.00002"
    assert models["text-embedding-3-small"].type == "embedding"
    assert (config.edge.http_port, config.edge.grpc_port, config.edge.admin_port) == (8080, 50051, 9901)


def test_valid_config_and_normalisation() -> None:
    config = parse_config(raw(workers=3, upstream_timeout_s=30, edge={"http_port": 1234, "unknown": 1}))
    openai = config.provider("openai")
    assert openai is not None and openai.base_url == "https://api.openai.com/v1"  # trailing slash dropped
    assert openai.api_key_env == "OPENAI_KEY"
    assert config.provider("local").api_key_env == ""  # type: ignore[union-attr]
    assert config.provider("nope") is None
    assert config.workers == 3 and config.upstream_timeout_s == 30.0
    assert config.edge == EdgeConfig(http_port=1234)


def test_defaults() -> None:
    assert parse_config(None) == Config()
    config = parse_config(raw(models=[{"id": "x", "routes": [route()]}]))
    model = config.models[0]
    assert model.type == "chat" and model.context_window == 0
    assert config.workers == 0 and config.upstream_timeout_s == 120.0


@pytest.mark.parametrize("text", ["0.00015", "0.0006", "0.00002", "12.5", "1e-7"])
def test_yaml_float_prices_stay_exact(text: str) -> None:
    data = yaml.safe_load(f"""
providers: [{{name: p, kind: openai, base_url: "http://h"}}]
models:
  - id: m
    routes: [{{provider: p, model: m, input_per_1k: {text}, output_per_1k: {text}}}]
""")
    price = parse_config(data).models[0].routes[0].input_per_1k
    assert isinstance(price, Decimal)
    assert price == Decimal(text)


def test_price_0_00015_is_not_binary_float() -> None:
    price = parse_config(with_route(route(input_per_1k=0.00015))).models[0].routes[1].input_per_1k
    assert price == Decimal("0.00015") and str(price) == "0.00015"
    assert price != Decimal(0.00015)  # what a float would have turned it into


@pytest.mark.parametrize(("data", "fragment"), [
    (raw(providers=[{"name": "x", "kind": "azure", "base_url": "http://h"}]),
     "providers[0]: kind must be one of"),
    (raw(providers=[{"kind": "openai", "base_url": "http://h"}]), "providers[0]: name is required"),
    (raw(providers=[{"name": "", "kind": "openai", "base_url": "http://h"}]),
     "providers[0]: name is required"),
    (raw(providers=[{"name": "a/b", "kind": "openai", "base_url": "http://h"}]), "may not contain '/'"),
    (raw(providers=[{"name": "x", "kind": "openai"}]), "providers[0]: base_url is required"),
    (raw(providers=[*BASE["providers"], {"name": "openai", "kind": "openai", "base_url": "http://h"}]),
     "providers[2]: duplicate provider name 'openai'"),
    (raw(models=[{"routes": [route()]}]), "models[0]: id is required"),
    (raw(models=[{"id": "x", "type": "audio", "routes": [route()]}]), "models[0]: type must be one of"),
    (raw(models=[{"id": "x"}]), "models[0]: at least one route is required"),
    (raw(models=[{"id": "x", "routes": []}]), "models[0]: at least one route is required"),
    (with_route(route(provider="anthropic")), "models[0].routes[1]: unknown provider 'anthropic'"),
    (with_route(route(provider=None)), "models[0].routes[1]: unknown provider None"),
    (with_route(route(model="")), "models[0].routes[1]: model is required"),
    (with_route(route(input_per_1k=None)), "models[0].routes[1]: input_per_1k and output_per_1k are"),
    (with_route(route(output_per_1k=None)), "models[0].routes[1]: input_per_1k and output_per_1k are"),
    (with_route(route(input_per_1k="-0.001")), "models[0].routes[1].input_per_1k: price must be a finite"),
    (with_route(route(output_per_1k=-1)), "models[0].routes[1].output_per_1k: price must be a finite"),
    (with_route(route(input_per_1k="abc")), "models[0].routes[1].input_per_1k: not a decimal price: 'abc'"),
    (with_route(route(input_per_1k=float("inf"))), "price must be a finite non-negative"),
    (with_route(route(input_per_1k=float("nan"))), "price must be a finite non-negative"),
    (with_route(route(input_per_1k="sNaN")), "price must be a finite non-negative"),
])
def test_config_errors_name_the_entry(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert fragment in str(info.value)


def test_unpriced_yaml_route_is_an_error_not_zero() -> None:
    data = yaml.safe_load("""
providers: [{name: p, kind: openai, base_url: "http://h"}]
models: [{id: m, routes: [{provider: p, model: m, input_per_1k: 0.001}]}]
""")
    with pytest.raises(ConfigError, match="output_per_1k"):
        parse_config(data)


def test_providers_are_checked_before_models() -> None:
    # Providers are validated before models: a bad provider is reported even if models are fine.
    with pytest.raises(ConfigError, match=r"providers\[1\]"):
        parse_config(raw(providers=[BASE["providers"][0],
                                    {"name": "x/y", "kind": "openai", "base_url": "h"}]))


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_config_path_and_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AGGREGATOR_CONFIG", raising=False)
    monkeypatch.delenv("AGGREGATOR_DATA_DIR", raising=False)
    assert config_path() == Path("aggregator.yaml")
    monkeypatch.setenv("AGGREGATOR_CONFIG", "/etc/agg.yaml")
    assert config_path() == Path("/etc/agg.yaml")
    assert config_path("explicit.yaml") == Path("explicit.yaml")
    assert data_dir().name == ".aggregator" and data_dir().is_absolute()
    monkeypatch.setenv("AGGREGATOR_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    assert data_dir(str(tmp_path / "x")) == (tmp_path / "x").resolve()


def test_store_urls_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://h/db")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("NATS_URL", raising=False)
    with pytest.raises(ConfigError, match="missing environment: REDIS_URL, NATS_URL"):
        StoreUrls.from_env()
    monkeypatch.setenv("REDIS_URL", "redis://h")
    monkeypatch.setenv("NATS_URL", "nats://h")
    assert StoreUrls.from_env() == StoreUrls("postgresql://h/db", "redis://h", "nats://h")


def test_rate_limits_fail_open_unless_told_closed() -> None:
    assert parse_config({}).rate_limits_fail_open
    assert parse_config({"rate_limits": {"on_redis_error": "open"}}).rate_limits_fail_open
    assert not parse_config({"rate_limits": {"on_redis_error": "closed"}}).rate_limits_fail_open
    with pytest.raises(ConfigError, match="on_redis_error"):
        parse_config({"rate_limits": {"on_redis_error": "sometimes"}})


def test_budgets_fail_closed_unless_told_open() -> None:
    assert not parse_config({}).budgets_fail_open
    assert parse_config({"budgets": {"on_redis_error": "open"}}).budgets_fail_open
    with pytest.raises(ConfigError, match="budgets.on_redis_error"):
        parse_config({"budgets": {"on_redis_error": "maybe"}})


def test_retention_defaults_and_bounds() -> None:
    assert parse_config({}).retention_days == (90, 730, 7 * 365, 7 * 365)
    assert parse_config({"retention": {"request_logs_days": 30, "billing_days": 3650}}).retention_days == (
        30, 730, 7 * 365, 3650)
    with pytest.raises(ConfigError, match="retention"):
        parse_config({"retention": {"analytics_days": 0}})


def test_route_weight_defaults_to_unbalanced_and_is_checked() -> None:
    assert [r.weight for r in parse_config(BASE).models[0].routes] == [0, 0]
    raw = copy.deepcopy(BASE)
    raw["models"][0]["routes"][0]["weight"] = 3
    assert parse_config(raw).models[0].routes[0].weight == 3
    for bad in (-1, 1.5, "2", True, 10001):
        raw["models"][0]["routes"][0]["weight"] = bad
        with pytest.raises(ConfigError, match=r"routes\[0\]: weight must be an integer between 0 and 10000"):
            parse_config(raw)
