"""parse_config: the `breakers` section and a provider's `health_check` (docs/reference.md §3)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.core.config import Breakers, ConfigError, HealthCheck, parse_config

BASE: dict[str, Any] = {
    "providers": [{"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1"}],
    "models": [{"id": "m", "routes": [{"provider": "openai", "model": "m", "input_per_1k": 0,
                                       "output_per_1k": 0}]}],
}


def raw(breakers: Any = None, health_check: Any = None) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    if breakers is not None:
        data["breakers"] = breakers
    if health_check is not None:
        data["providers"][0]["health_check"] = health_check
    return data


def test_defaults_are_todays_breakers_and_no_probe() -> None:
    config = parse_config(raw())
    assert config.breakers == Breakers(3, 30.0, 0.5, 20)
    assert config.providers[0].health_check is None


def test_breakers_section_is_read() -> None:
    config = parse_config(raw({"failure_threshold": 5, "open_s": 2.5, "error_rate": 0.25, "min_samples": 40}))
    assert config.breakers == Breakers(5, 2.5, 0.25, 40)


def test_health_check_with_and_without_path() -> None:
    config = parse_config(raw(health_check={"interval_s": 10, "timeout_s": 5}))
    assert config.providers[0].health_check == HealthCheck(10.0, 5.0, "")
    config = parse_config(raw(health_check={"interval_s": 2, "timeout_s": 1, "path": "/health"}))
    assert config.providers[0].health_check == HealthCheck(2.0, 1.0, "/health")
    assert parse_config(raw(health_check={})).providers[0].health_check == HealthCheck()


@pytest.mark.parametrize(("breakers", "message"), [
    ({"failure_threshold": 0}, "breakers.failure_threshold must be at least 1"),
    ({"failure_threshold": 2.5}, "breakers.failure_threshold must be an integer"),
    ({"failure_threshold": True}, "breakers.failure_threshold must be an integer"),
    ({"open_s": 0}, "breakers.open_s must be positive"),
    ({"open_s": "long"}, "breakers.open_s must be a number"),
    ({"error_rate": 0}, "breakers.error_rate must be above 0"),
    ({"error_rate": 1.5}, "breakers.error_rate must be above 0 and at most 1"),
    ({"min_samples": 0}, "breakers.min_samples must be at least 1"),
    ({"trial_s": 3}, "breakers: unknown key 'trial_s'"),
    ([1, 2], "breakers must be a mapping"),
])
def test_bad_breakers_are_refused_naming_the_key(breakers: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw(breakers))


@pytest.mark.parametrize(("check", "message"), [
    ({"interval_s": 0.5}, r"providers\[0\].health_check.interval_s must be between 1 and 86400"),
    ({"interval_s": "often"}, r"providers\[0\].health_check.interval_s must be a number"),
    ({"interval_s": 5, "timeout_s": 6}, r"health_check.timeout_s must be positive and at most interval_s"),
    ({"timeout_s": 0}, r"health_check.timeout_s must be positive"),
    ({"path": "models"}, r"health_check.path must start with '/'"),
    ({"path": "/models?key=x"}, r"health_check.path must start with '/' and carry no query"),
    ({"every": 3}, r"providers\[0\].health_check: unknown key 'every'"),
    ("yes", r"providers\[0\].health_check must be a mapping"),
])
def test_bad_health_checks_are_refused_naming_the_key(check: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw(health_check=check))
