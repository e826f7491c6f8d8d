"""Embedding conformance."""

from __future__ import annotations

import base64

import orjson
import pytest
from openai.types import CreateEmbeddingResponse

from services.core.errors import Reason
from tests.conformance.conftest import Harness


def check_labels(harness: Harness, body: dict[str, object]) -> None:
    assert body["model"] == "smart-model"
    assert body["provider"] == {"name": f"prov-{harness.profile.id}", "model": "text-embedding-3-small",
                                "latency_ms": body["provider"]["latency_ms"]}  # type: ignore[index]


@pytest.mark.conformance("embeddings")
async def test_embeddings(harness: Harness) -> None:
    response = await harness.embed({"input": ["first text", "second"], "dimensions": 12})
    body = orjson.loads(response.body)
    check_labels(harness, body)
    parsed = CreateEmbeddingResponse.model_validate(body)
    assert [len(d.embedding) for d in parsed.data] == [12, 12] and [d.index for d in parsed.data] == [0, 1]
    assert response.usage.prompt_tokens == 3 and response.usage.total_tokens == 3
    sent = harness.fake.requests[-1]
    assert sent.path == "/v1/embeddings" and sent.json["model"] == "text-embedding-3-small"
    assert sent.headers["x-request-id"] == "req-conf-embed"


@pytest.mark.conformance("embeddings")
async def test_token_id_input_stays_integers(harness: Harness) -> None:
    response = await harness.embed({"input": [[1, 2, 3], [4]]})
    assert response.usage.prompt_tokens == 4
    assert harness.fake.requests[-1].json["input"] == [[1, 2, 3], [4]]


@pytest.mark.conformance("embeddings_base64")
async def test_embeddings_base64(harness: Harness) -> None:
    response = await harness.embed({"input": "hello", "dimensions": 4, "encoding_format": "base64"})
    body = orjson.loads(response.body)
    check_labels(harness, body)
    assert len(base64.b64decode(body["data"][0]["embedding"])) == 4 * 4


@pytest.mark.conformance("embeddings")
async def test_embedding_errors(harness: Harness) -> None:
    harness.fake.fail_next(harness.profile.failures.rate_limited(3))
    with pytest.raises(Exception) as info:
        await harness.embed({"input": "x"})
    assert getattr(info.value, "reason", None) is Reason.UPSTREAM_RATE_LIMITED
    assert getattr(info.value, "retry_after", None) == 3.0
