"""Legacy completions and images through Envoy with the official openai SDK."""

from __future__ import annotations

import base64
from decimal import Decimal

import httpx
import openai
import pytest

from services.core.config import StoreUrls
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.usage_watch import UsageWatch

pytestmark = pytest.mark.e2e
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def test_completion_non_stream_and_stream(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(
        model="gpt-4o-mini", prompt="Say this is a test", max_tokens=20
    )
    assert completion.object == "text_completion" and completion.model == "gpt-4o-mini"
    assert completion.choices[0].text and completion.usage and completion.usage.total_tokens > 0
    assert completion.model_extra["provider"]["name"] == "fakeai"

    stream = await client.completions.create(
        model="gpt-4o-mini",
        prompt="Say this is a test",
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        text += "".join(choice.text for choice in chunk.choices)
        usage = chunk.usage or usage
    assert text == completion.choices[0].text
    assert usage is not None and usage.completion_tokens == completion.usage.completion_tokens


async def test_image_generation_priced_by_tokens_and_by_image(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, store_urls: StoreUrls
) -> None:
    images = await client.images.generate(model="gpt-image-1", prompt="a red dot", n=2)
    assert len(images.data) == 2 and images.data[0].b64_json
    assert images.usage is not None and images.usage.output_tokens > 0

    async with UsageWatch(store_urls) as watch:
        response = await http.post("/v1/images/generations",
                                   json={"model": "dall-e-3", "prompt": "a red dot"})
        assert response.status_code == 200, response.text
        assert response.json()["provider"]["name"] == "fakeai"
        events = await watch.events_for(response.headers["x-request-id"])
    assert len(events) == 1 and events[0].images == 1 and events[0].endpoint == "images.generations"
    assert Decimal(events[0].cost_usd) == Decimal("0.04")


async def test_image_edit_and_variation_are_multipart(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    edited = await client.images.edit(
        model="gpt-image-1",
        prompt="add a hat",
        image=("dot.png", PNG, "image/png"),
        mask=("mask.png", PNG, "image/png"),
    )
    assert edited.data and edited.data[0].b64_json
    received = upstream.requests[-1]
    assert received.json["prompt"] == "add a hat" and received.json["model"] == "gpt-image-1"
    assert [(f.field, f.filename, f.data) for f in received.files] == [
        ("image", "dot.png", PNG),
        ("mask", "mask.png", PNG),
    ]

    varied = await client.images.create_variation(model="dall-e-3", image=("dot.png", PNG, "image/png"), n=1)
    assert len(varied.data) == 1


async def test_image_endpoint_refuses_chat_models_and_bad_uploads(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/images/generations", json={"model": "gpt-4o-mini", "prompt": "x"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    response = await http.post(
        "/v1/images/edits", content=b"not multipart", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
