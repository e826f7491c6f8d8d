"""Every error row of docs/reference.md §4 this gateway has so far: OpenAI-shaped, right status, no
Envoy or gRPC text."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.harness import Gateway
from tests.fakes import openai_failures
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
LEAKS = ("envoy", "grpc", "upstream connect", "Traceback", "INVALID_ARGUMENT", "proto")


def assert_openai_error(
    response: httpx.Response, status: int, *, code: str | None = None, error_type: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert all(leak.lower() not in error["message"].lower() for leak in LEAKS), error["message"]
    assert not any(
        h.startswith(("grpc-", "x-envoy-", "x-openai-error", "x-http-status")) for h in response.headers
    )
    if code is not None:
        assert error["code"] == code
    if error_type is not None:
        assert error["type"] == error_type
    return error


@pytest.fixture
async def anonymous(gateway: Gateway):
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as raw:
        yield raw


async def test_missing_key_401(anonymous: httpx.AsyncClient) -> None:
    assert_openai_error(await anonymous.post("/v1/chat/completions", json=CHAT), 401)
    assert_openai_error(await anonymous.get("/v1/models"), 401)


async def test_wrong_key_401(anonymous: httpx.AsyncClient) -> None:
    wrong = "sk_live_" + "x" * 43
    response = await anonymous.post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {wrong}"}
    )
    error = assert_openai_error(response, 401, code="invalid_api_key")
    assert wrong not in error["message"]


async def test_sdk_raises_authentication_error(gateway: Gateway) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url + "/v1", api_key="sk_live_nope", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(**CHAT)


async def test_malformed_json_400(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert_openai_error(response, 400, error_type="invalid_request_error")


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-4o-mini", "messages": 5},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": "two"},
    ],
)
async def test_wrong_types_400(http: httpx.AsyncClient, body: dict) -> None:
    assert_openai_error(
        await http.post("/v1/chat/completions", json=body), 400, error_type="invalid_request_error"
    )


async def test_invalid_values_400_name_the_param(http: httpx.AsyncClient) -> None:
    body = {**CHAT, "temperature": 3}
    error = assert_openai_error(await http.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == "temperature"
    error = assert_openai_error(await http.post("/v1/chat/completions", json={**CHAT, "messages": []}), 400)
    assert error["param"] == "messages"


async def test_unknown_model_404(http: httpx.AsyncClient) -> None:
    error = assert_openai_error(
        await http.post("/v1/chat/completions", json={**CHAT, "model": "nope"}), 404, code="model_not_found"
    )
    assert error["param"] == "model"
    assert_openai_error(await http.get("/v1/models/nope"), 404, code="model_not_found")


async def test_unknown_path_404(http: httpx.AsyncClient) -> None:
    assert_openai_error(await http.get("/v1/nothing-here"), 404)
    assert_openai_error(await http.post("/v2/chat/completions", json=CHAT), 404)


async def test_body_over_10_mib_413(http: httpx.AsyncClient) -> None:
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024 + 1)}]}
    assert_openai_error(await http.post("/v1/chat/completions", json=huge), 413)


async def test_upstream_5xx_after_fallbacks_502(http: httpx.AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.fail_next(openai_failures.server_error(500), times=3)
    assert_openai_error(await http.post("/v1/chat/completions", json=CHAT), 502, error_type="upstream_error")


async def test_upstream_unreachable_503(http: httpx.AsyncClient) -> None:
    assert_openai_error(
        await http.post("/v1/chat/completions", json={**CHAT, "model": "only-dead"}),
        503,
        error_type="upstream_error",
    )


async def test_upstream_503_streamed_request_fails_before_first_byte(
    http: httpx.AsyncClient, upstream: FakeOpenAI
) -> None:
    upstream.fail_next(openai_failures.unavailable(), times=3)
    response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert_openai_error(response, 503)


async def test_upstream_rate_limit_429_keeps_retry_after(
    http: httpx.AsyncClient, upstream: FakeOpenAI
) -> None:
    upstream.fail_next(openai_failures.rate_limited(7), times=3)
    response = await http.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 429)
    assert response.headers["retry-after"] == "7"


async def test_failure_after_first_byte_is_in_band(http: httpx.AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.fail_next(openai_failures.in_stream(after_chunks=2))
    async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        events = [e for e in (await response.aread()).decode().split("\n\n") if e]
    assert events[0].startswith("data: {")
    assert '"error"' in events[-1] and events[-1].startswith("data: ")
    assert "data: [DONE]" not in events
