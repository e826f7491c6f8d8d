"""The e2e harness writes the config file its service processes read, and a replica started from
that file re-syncs the catalog from it: the file must say everything the test config says (a route
weight once went missing, and the replica of tests/e2e/test_budgets.py reset every weight)."""

from __future__ import annotations

import dataclasses

from services.core.config import Breakers, HealthCheck, Resilience, parse_config
from tests.e2e.conftest import _vendor_catalog
from tests.e2e.harness import config_document, gateway_config


class _Fake:
    base_url = "http://127.0.0.1:1"


def test_the_config_file_says_everything_the_config_does() -> None:
    providers, models = _vendor_catalog({"anthropic": _Fake(), "google": _Fake(), "cohere": _Fake()})
    providers.append({"name": "probed", "kind": "openai_compatible", "base_url": "http://127.0.0.1:5/v1",
                      "health_check": {"interval_s": 2, "timeout_s": 1, "path": "/health"}})
    config = dataclasses.replace(
        gateway_config("http://127.0.0.1:2/v1", "http://127.0.0.1:3/v1", "http://127.0.0.1:4/v1",
                       providers, models),
        breakers=Breakers(failure_threshold=2, open_s=2.5, error_rate=0.75, min_samples=5))
    again = parse_config(config_document(config))
    assert again.providers == config.providers
    assert again.providers[-1].health_check == HealthCheck(2.0, 1.0, "/health")  # the case added last
    assert again.breakers == config.breakers
    assert again.models == config.models
    assert any(r.weight for m in config.models for r in m.routes)  # the case that went missing
    hedged = dataclasses.replace(config, resilience=Resilience(hedge_after_ms=200, hedge_percentile=95))
    assert parse_config(config_document(hedged)).resilience == hedged.resilience
