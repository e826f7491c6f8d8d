"""Embedding conformance."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from openai.types import CreateEmbeddingResponse

from services.core.errors import GatewayError, Reason
from tests.conformance.conftest import Harness
from tests.conformance.providers import same_json


def check_labels(harness: Harness, body: dict[str, Any]) -> None:
    assert body["model"] == "smart-model"
    assert body["provider"] == {"name": f"prov-{harness.profile.id}",
                                "model": harness.profile.wire.reported_model("text-embedding-3-small"),
                                "latency_ms": body["provider"]["latency_ms"]}


@pytest.mark.conformance("embeddings")
async def test_embeddings(harness: Harness) -> None:
    response = await harness.embed({"input": ["first text", "second"], "dimensions": 12})
    body = orjson.loads(response.body)
    check_labels(harness, body)
    parsed = CreateEmbeddingResponse.model_validate(body)
    assert [len(d.embedding) for d in parsed.data] == [12, 12] and [d.index for d in parsed.data] == [0, 1]
    assert response.usage.prompt_tokens == 3 and response.usage.total_tokens == 3
    sent = harness.sent()
    assert sent.embedding_model() == "text-embedding-3-small"
    assert sent.embedding_inputs() == ["first text", "second"]
    assert sent.request_id() == "req-conf-embed"


@pytest.mark.conformance("embeddings_token_ids")
async def test_token_id_input_stays_integers(harness: Harness) -> None:
    response = await harness.embed({"input": [[1, 2, 3], [4]]})
    assert response.usage.prompt_tokens == 4
    assert same_json(harness.sent().embedding_inputs(), [[1, 2, 3], [4]])


@pytest.mark.conformance("embeddings_token_ids", declared_out=True)
async def test_token_id_input_is_refused_before_sending(harness: Harness) -> None:
    with pytest.raises(GatewayError) as info:
        await harness.embed({"input": [[1, 2, 3], [4]]})
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.http_status == 400
    assert not harness.fake.requests


@pytest.mark.conformance("embeddings", declared_out=True)
async def test_a_kind_without_embeddings_refuses_them(harness: Harness) -> None:
    with pytest.raises(GatewayError) as info:
        await harness.embed({"input": "x"})
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.http_status == 400
    assert not harness.fake.requests


@pytest.mark.conformance("embeddings_base64")
async def test_embeddings_base64(harness: Harness) -> None:
    response = await harness.embed({"input": "hello", "dimensions": 4, "encoding_format": "base64"})
    body = orjson.loads(response.body)
    check_labels(harness, body)
    assert len(base64.b64decode(body["data"][0]["embedding"])) == 4 * 4


@pytest.mark.conformance("embeddings")
async def test_embedding_errors(harness: Harness) -> None:
    harness.fake.fail_next(harness.profile.failures.rate_limited(3))
    with pytest.raises(GatewayError) as info:
        await harness.embed({"input": "x"})
    assert info.value.reason is Reason.UPSTREAM_RATE_LIMITED and info.value.retry_after == 3.0
