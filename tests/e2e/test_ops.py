"""Operations: `/metrics` needs an admin key on the public listener; the ops port serves
`/metrics`, `/healthz` and `/readyz` without one (docs/reference.md §2 and §4)."""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e


def _series(metrics: str, name: str) -> set[str]:
    return {line.split(" ")[0] for line in metrics.splitlines() if line.startswith(name + "{")}


async def test_public_metrics_need_an_admin_key(gateway: Gateway, http: httpx.AsyncClient) -> None:
    answer = await http.get("/metrics")
    assert answer.status_code == 200 and "aggregator_requests_total" in answer.text
    created = await http.post("/v1/api-keys", json={"name": "metrics-member", "role": "member"})
    member = created.json()["key"]
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as anonymous:
        refused = await anonymous.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
        refused = await anonymous.get("/metrics", headers={"authorization": f"Bearer {member}"})
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        # Liveness and readiness stay open to load balancers.
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        assert (await anonymous.get("/readyz")).json() == {"status": "ready"}


async def test_the_ops_port_serves_prometheus_without_a_key(
        gateway: Gateway, http: httpx.AsyncClient) -> None:
    assert (await http.post("/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})).status_code == 200
    async with httpx.AsyncClient(base_url=gateway.ops_url, timeout=30) as ops:
        metrics = await ops.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert re.search(r'aggregator_requests_total\{[^}]*model="gpt-4o-mini"', metrics.text)
        assert (await ops.get("/healthz")).json() == {"status": "ok"}
        assert (await ops.get("/readyz")).json() == {"status": "ready"}
        assert (await ops.get("/v1/models")).status_code == 404  # nothing else lives there


async def test_unknown_model_ids_create_no_series(gateway: Gateway, http: httpx.AsyncClient) -> None:
    async def send(model: str) -> None:
        answer = await http.post("/v1/chat/completions",
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 404

    async with httpx.AsyncClient(base_url=gateway.ops_url, timeout=30) as ops:
        await send("warm-up-" + secrets.token_hex(8))
        before = _series((await ops.get("/metrics")).text, "aggregator_requests_total")
        models = ["random-" + secrets.token_hex(8) for _ in range(5)]
        for model in models:
            await send(model)
        metrics = (await ops.get("/metrics")).text
    assert _series(metrics, "aggregator_requests_total") == before
    assert not any(model in metrics for model in models)
    assert 'model="unknown"' in metrics


def _value(metrics: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels` (parsed, so label order does not
    matter), or -1 when there is none."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return -1.0


async def test_the_ops_port_shows_errors_stores_cache_ledger_and_upstream_families(
        gateway: Gateway, http: httpx.AsyncClient) -> None:
    chat = {"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "metrics " + secrets.token_hex(4)}]}
    assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
    for _ in range(2):  # a miss, then a hit
        cached = await http.post("/v1/chat/completions", json=chat, headers={"x-aggregator-cache": "use"})
        assert cached.status_code == 200
    assert cached.headers["x-cache"] == "HIT"
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as anonymous:
        refused = await anonymous.post("/v1/chat/completions", json=chat,
                                       headers={"authorization": "Bearer sk_live_not-a-key"})
        assert refused.status_code == 401
    # A process reports what it does: the ledger's and the adapter's series are on this port only
    # when they run in the edge's process (topology "all"; docs/observability.md §1).
    ledger_here, adapter_here = "ledger" not in gateway.processes, "adapter" not in gateway.processes
    async with httpx.AsyncClient(base_url=gateway.ops_url, timeout=30) as ops:
        metrics = (await ops.get("/metrics")).text
        deadline = time.monotonic() + 60  # the ledger commits in the background (batches, linger)
        while ledger_here and _value(metrics, "aggregator_ledger_lag_seconds_count") <= 0:
            assert time.monotonic() < deadline, "the ledger never reported a committed event"
            await asyncio.sleep(0.2)
            metrics = (await ops.get("/metrics")).text
    assert _value(metrics, "aggregator_errors_total", reason="INVALID_API_KEY",
                  type="invalid_request_error") >= 1
    for store in ("postgres", "redis", "nats"):  # probed at the scrape
        assert _value(metrics, "aggregator_store_up", store=store) == 1
        assert _value(metrics, "aggregator_store_probe_seconds_count", store=store) >= 1
    assert _value(metrics, "aggregator_response_cache_lookups_total", result="hit") >= 1
    assert _value(metrics, "aggregator_response_cache_lookups_total", result="miss") >= 1
    assert _value(metrics, "aggregator_outbox_events", outbox="usage") == 0  # NATS is up: nothing waits
    assert _value(metrics, "aggregator_time_to_first_token_seconds_count", model="gpt-4o-mini") >= 1
    if ledger_here:
        assert _value(metrics, "aggregator_ledger_pending_events") >= 0
    if adapter_here:
        assert _value(metrics, "aggregator_upstream_response_seconds_count", provider="fakeai",
                      outcome="ok") >= 1
