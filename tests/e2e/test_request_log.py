"""The request log through Envoy with the official SDK, in both topologies (the ledger in its own
process in the split one): what the usage event now carries lands in its columns, and bodies are
kept, redacted, only for an organization that opted in (`store_prompts`)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid

import asyncpg
import httpx
import openai
import orjson
import pytest

from services.auth import admin
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e


async def logged(pool: asyncpg.Pool, request_id: str, within: float = 30.0) -> asyncpg.Record:
    deadline = time.monotonic() + within
    while True:
        row = await pool.fetchrow(
            "SELECT r.user_agent, host(r.client_ip) AS ip, r.body::text AS request_body, "
            "s.finish_reason, s.body::text AS response_body, a.finish_reason AS flat_finish "
            "FROM api_requests r JOIN api_responses s USING (request_id) "
            "JOIN request_analytics a USING (request_id) WHERE r.request_id = $1", request_id)
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"request {request_id} never reached the request log"
            return row
        await asyncio.sleep(0.1)


async def organization_key(http: httpx.AsyncClient, pool: asyncpg.Pool) -> tuple[str, str]:
    org_id = await admin.create_org(pool, f"log-{uuid.uuid4().hex[:8]}")
    key = (await http.post("/v1/api-keys", json={"name": "log", "organization_id": org_id,
                                                 "role": "admin"})).json()["key"]
    return org_id, key


async def test_bodies_are_kept_redacted_only_where_the_organization_opted_in(
        http: httpx.AsyncClient, pool: asyncpg.Pool, gateway: Gateway) -> None:
    org_id, key = await organization_key(http, pool)
    headers = {"authorization": f"Bearer {key}"}
    organization = (await http.get(f"/v1/organizations/{org_id}", headers=headers)).json()
    assert organization["store_prompts"] is False
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0) as client:
        prompt = [{"role": "user", "content": "Write to dave@example.com about the log"}]
        before = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=prompt)
        changed = await http.patch(f"/v1/organizations/{org_id}", json={"store_prompts": True},
                                   headers=headers)
        assert changed.status_code == 200 and changed.json()["store_prompts"] is True
        kept = None
        deadline = time.monotonic() + 10  # every process learns of the change over NATS
        while time.monotonic() < deadline:
            after = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                           messages=prompt)
            row = await logged(pool, after.headers["x-request-id"])
            if row["request_body"] is not None:
                kept = (after, row)
                break
        streamed = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=prompt, stream=True)
        chunks = [chunk async for chunk in streamed.parse()]
    assert kept is not None, "the organization's opt-in never applied"
    after, row = kept
    request = orjson.loads(row["request_body"])
    assert request["model"] == "gpt-4o-mini"
    assert request["messages"][0]["content"] == "Write to [REDACTED] about the log"
    answer = orjson.loads(row["response_body"])
    assert answer["id"] == after.parse().id and answer["object"] == "chat.completion"
    assert row["finish_reason"] == row["flat_finish"] == after.parse().choices[0].finish_reason == "stop"
    assert row["user_agent"].startswith("AsyncOpenAI/Python")
    # The address Envoy appended to x-forwarded-for (for a loopback client, this machine's own).
    assert ipaddress.ip_address(row["ip"])
    before_row = await logged(pool, before.headers["x-request-id"])
    assert before_row["request_body"] is None and before_row["response_body"] is None
    assert before_row["finish_reason"] == "stop"
    stream_row = await logged(pool, streamed.headers["x-request-id"])
    stored_chunks = orjson.loads(stream_row["response_body"])
    assert [c["id"] for c in stored_chunks] == [c.id for c in chunks]
    assert stream_row["finish_reason"] == "stop"


async def test_only_an_admin_of_the_organization_opts_it_in(http: httpx.AsyncClient,
                                                            pool: asyncpg.Pool) -> None:
    org_id, _ = await organization_key(http, pool)
    member = (await http.post("/v1/api-keys", json={"name": "m", "organization_id": org_id,
                                                    "role": "member"})).json()["key"]
    refused = await http.patch(f"/v1/organizations/{org_id}", json={"store_prompts": True},
                               headers={"authorization": f"Bearer {member}"})
    assert refused.status_code == 403
    assert await pool.fetchval("SELECT store_prompts FROM organizations WHERE id = $1::uuid", org_id) is False
