"""Operations: `/metrics` needs an admin key on the public listener; the ops port serves
`/metrics`, `/healthz` and `/readyz` without one (docs/reference.md §2 and §4)."""

from __future__ import annotations

import re
import secrets

import httpx
import pytest

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
