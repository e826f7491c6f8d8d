"""The Gemini fake speaks the real format: every payload it produces is validated with the official
`google-genai` types (strict: unknown fields fail), error bodies with the googleapis `google.rpc`
protos, and its scripting (failures, holds, disconnects) does what it says."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from google import genai
from google.genai import errors, types
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.adapters.google_wire import CODE_HTTP_STATUS
from tests.fakes import google_failures as failures
from tests.fakes import google_payloads as payloads
from tests.fakes.google_upstream import FakeGoogle

ROOT = Path(__file__).resolve().parents[2]
KEY = "AIza-fake-test-key"
WEATHER = {"functionDeclarations": [{"name": "get_weather", "description": "Current weather",
                                     "parametersJsonSchema": {"type": "object", "properties": {
                                         "city": {"type": "string"}, "days": {"type": "integer"}},
                                         "required": ["city", "days"]}}]}


@pytest.fixture
async def fake() -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle(api_key=KEY, model_aliases={"gemini-2.0-flash": "gemini-2.0-flash-001"}) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-goog-api-key": KEY}) as session:
        yield session


def url(fake: FakeGoogle, method: str, model: str = "gemini-2.0-flash") -> str:
    return f"{fake.base_url}/v1beta/models/{model}:{method}"


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


async def post(http: aiohttp.ClientSession, target: str, body: Any,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.post(target, data=orjson.dumps(body), headers=headers) as response:
        return response.status, orjson.loads(await response.read())


async def generate(http: aiohttp.ClientSession, fake: FakeGoogle,
                   body: dict[str, Any]) -> types.GenerateContentResponse:
    status, answer = await post(http, url(fake, "generateContent"), body)
    assert status == 200, answer
    return types.GenerateContentResponse.model_validate(answer)


async def stream(http: aiohttp.ClientSession, fake: FakeGoogle,
                 body: dict[str, Any]) -> list[types.GenerateContentResponse]:
    """Posts a stream and validates every event; Gemini sends no [DONE]."""
    target = url(fake, "streamGenerateContent") + "?alt=sse"
    async with http.post(target, data=orjson.dumps(body)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    blocks = [block for block in raw.split("\r\n\r\n") if block]
    assert all(block.startswith("data: {") for block in blocks)
    return [types.GenerateContentResponse.model_validate_json(b.removeprefix("data: ")) for b in blocks]


def text_of(response: types.GenerateContentResponse, index: int = 0) -> str:
    candidate = (response.candidates or [])[index]
    return "".join(p.text or "" for p in (candidate.content.parts or [] if candidate.content else []))


def rpc_status(body: Any) -> status_pb2.Status:
    """An error body read as the google.rpc.Status it stands for: Google's JSON puts the HTTP status in
    `code` and the canonical code's name in `status`; every detail must be a known googleapis type."""
    error = dict(body["error"])
    name, http_status = error.pop("status"), error.pop("code")
    status = json_format.ParseDict(error, status_pb2.Status())
    status.code = code_pb2.Code.Value(name)
    assert http_status == CODE_HTTP_STATUS[status.code]
    return status


async def test_generate_echoes_and_validates(fake: FakeGoogle, http: aiohttp.ClientSession) -> None:
    answer = await generate(http, fake, {"systemInstruction": {"parts": [{"text": "Be brief."}]},
                                         "contents": [user({"text": "Hello there, fake"})],
                                         "generationConfig": {"temperature": 0.5}})
    assert answer.model_version == "gemini-2.0-flash-001" and answer.response_id
    assert text_of(answer) == "Hello there, fake"
    candidate = (answer.candidates or [])[0]
    assert candidate.finish_reason == types.FinishReason.STOP and candidate.index is None
    usage = answer.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (11, 3, 14)
    assert fake.requests[-1].headers["x-goog-api-key"] == KEY
    assert fake.requests[-1].path == "/v1beta/models/gemini-2.0-flash:generateContent"


async def test_stream_events_end_without_done(fake: FakeGoogle, http: aiohttp.ClientSession) -> None:
    events = await stream(http, fake, {"contents": [user({"text": "one two three"})]})
    assert [text_of(e) for e in events] == ["one ", "two ", "three"]
    assert [(e.candidates or [])[0].finish_reason for e in events] == [None, None, types.FinishReason.STOP]
    assert all(e.usage_metadata and e.usage_metadata.prompt_token_count == 6 for e in events)
    assert events[-1].usage_metadata and events[-1].usage_metadata.candidates_token_count == 3
    assert len({e.response_id for e in events}) == 1
    assert fake.requests[-1].query == {"alt": "sse"}


async def test_stream_without_alt_sse_is_one_json_array(fake: FakeGoogle,
                                                        http: aiohttp.ClientSession) -> None:
    body = {"contents": [user({"text": "a b"})]}
    status, answer = await post(http, url(fake, "streamGenerateContent"), body)
    assert status == 200 and isinstance(answer, list) and len(answer) == 2
    assert [text_of(types.GenerateContentResponse.model_validate(e)) for e in answer] == ["a ", "b"]


async def test_function_call_whole_with_signature(fake: FakeGoogle, http: aiohttp.ClientSession) -> None:
    body = {"contents": [user({"text": "get_weather for Paris"})], "tools": [WEATHER]}
    answer = await generate(http, fake, body)
    call = (answer.candidates or [])[0].content.parts[0]  # type: ignore[union-attr, index]
    assert call.function_call is not None and call.function_call.name == "get_weather"
    assert call.function_call.args == {"city": "get_weather for Paris", "days": 42}
    assert call.thought_signature == b"fake-thought:get_weather"
    forced = {"contents": [user({"text": "what is the weather?"})], "tools": [WEATHER],
              "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                       "allowedFunctionNames": ["get_weather"]}}}
    [event] = await stream(http, fake, forced)
    part = (event.candidates or [])[0].content.parts[0]  # type: ignore[union-attr, index]
    assert part.function_call and part.function_call.args == {"city": "what is the weather?", "days": 42}
    assert (event.candidates or [])[0].finish_reason == types.FinishReason.STOP


async def test_no_call_without_being_asked_or_with_none(fake: FakeGoogle,
                                                        http: aiohttp.ClientSession) -> None:
    assert text_of(await generate(http, fake, {"contents": [user({"text": "just chat"})],
                                               "tools": [WEATHER]})) == "just chat"
    body = {"contents": [user({"text": "get_weather now"})], "tools": [WEATHER],
            "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}
    assert text_of(await generate(http, fake, body)) == "get_weather now"


async def test_tool_result_images_and_json(fake: FakeGoogle, http: aiohttp.ClientSession) -> None:
    turns = [user({"text": "weather?"}),
             {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}, "id": "c1"}}]},
             user({"functionResponse": {"name": "get_weather", "id": "c1",
                                        "response": {"content": "sunny"}}})]
    assert text_of(await generate(http, fake, {"contents": turns})) == "Tool result: sunny"
    image = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    linked = {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/a.jpg"}}
    answer = await generate(http, fake, {"contents": [user({"text": "describe"}, image, linked)]})
    assert text_of(answer) == "describe [2 images]"
    answer = await generate(http, fake, {"contents": [user({"text": "hi"})],
                                         "generationConfig": {"responseMimeType": "application/json"}})
    assert orjson.loads(text_of(answer)) == {"echo": "hi"}


async def test_stop_max_tokens_candidates_and_thoughts(fake: FakeGoogle,
                                                       http: aiohttp.ClientSession) -> None:
    config = {"stopSequences": ["STOP"], "candidateCount": 2}
    answer = await generate(http, fake, {"contents": [user({"text": "alpha beta STOP gamma"})],
                                         "generationConfig": config})
    assert [text_of(answer, i) for i in range(2)] == ["alpha beta ", "alpha beta "]
    assert [c.index for c in answer.candidates or []] == [None, 1]
    answer = await generate(http, fake, {"contents": [user({"text": "a b c d e"})],
                                         "generationConfig": {"maxOutputTokens": 2,
                                                              "thinkingConfig": {"thinkingLevel": "LOW"}}})
    assert text_of(answer) == "a b "
    assert (answer.candidates or [])[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert answer.usage_metadata and answer.usage_metadata.thoughts_token_count == payloads.THOUGHT_TOKENS


async def test_embeddings_single_and_batch(fake: FakeGoogle, http: aiohttp.ClientSession) -> None:
    one = {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello"}]},
           "outputDimensionality": 8}
    status, answer = await post(http, url(fake, "embedContent", "gemini-embedding-001"), one)
    assert status == 200 and set(answer) == {"embedding"}
    single = types.SingleEmbedContentResponse.model_validate(answer)
    assert single.embedding and len(single.embedding.values or []) == 8
    batch = {"requests": [one, {**one, "content": {"parts": [{"text": "two words"}]}}]}
    status, answer = await post(http, url(fake, "batchEmbedContents", "gemini-embedding-001"), batch)
    parsed = types.EmbedContentResponse.model_validate(answer)
    assert status == 200 and [len(e.values or []) for e in parsed.embeddings or []] == [8, 8]
    assert (parsed.embeddings or [])[0].values == (single.embedding.values or [])
    fake.embedding_usage = True
    _, answer = await post(http, url(fake, "batchEmbedContents", "gemini-embedding-001"), batch)
    parsed = types.EmbedContentResponse.model_validate(answer)
    assert parsed.usage_metadata and parsed.usage_metadata.prompt_token_count == 3
    wrong = {"requests": [{**one, "model": "models/other"}]}
    status, answer = await post(http, url(fake, "batchEmbedContents", "gemini-embedding-001"), wrong)
    assert status == 400 and rpc_status(answer).code == 3


@pytest.mark.parametrize("headers, status, reason", [
    ({"x-goog-api-key": "AIza-wrong"}, 400, "API_KEY_INVALID"),
    ({"x-goog-api-key": ""}, 403, None),
])
async def test_api_key_is_checked(fake: FakeGoogle, headers: dict[str, str], status: int,
                                  reason: str | None) -> None:
    async with aiohttp.ClientSession() as session:
        got, body = await post(session, url(fake, "generateContent"), {"contents": [user({"text": "x"})]},
                               headers)
    assert got == status
    error = errors.APIError(got, body)
    assert error.status == ("INVALID_ARGUMENT" if status == 400 else "PERMISSION_DENIED")
    infos = []
    for detail in rpc_status(body).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info.reason)
    assert infos == ([reason] if reason else [])


async def test_known_models_and_unknown_fields(http: aiohttp.ClientSession) -> None:
    async with FakeGoogle(api_key=KEY, known_models={"models/gemini-2.0-flash"}) as fake:
        body = {"contents": [user({"text": "x"})]}
        status, body = await post(http, url(fake, "generateContent", "nope"), body)
        assert status == 404 and errors.APIError(status, body).status == "NOT_FOUND"
        for bad in ({"contents": [user({"text": "x"})], "temperature": 1},
                    {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
                    {"contents": [user({"text": "x"})], "generationConfig": {"max_tokens": 3}}):
            status, body = await post(http, url(fake, "generateContent"), bad)
            assert status == 400 and rpc_status(body).code == 3


@pytest.mark.parametrize("failure, status, delay", [
    (failures.rate_limited(3), 429, 3.0),
    (failures.rate_limited(2, 1500), 429, 1.5),
    (failures.server_error(), 500, None),
    (failures.unavailable(), 503, None),
    (failures.unauthorized(), 400, None),
    (failures.forbidden(), 403, None),
    (failures.bad_request(), 400, None),
    (failures.unprocessable(), 400, None),
    (failures.context_length_exceeded(), 400, None),
    (failures.model_not_found(), 404, None),
    (failures.timeout(), 504, None),
])
async def test_scripted_failures_are_google_errors(fake: FakeGoogle, http: aiohttp.ClientSession,
                                                   failure: Any, status: int, delay: float | None) -> None:
    fake.fail_next(failure, times=2)
    for _ in range(2):
        got, body = await post(http, url(fake, "generateContent"), {"contents": [user({"text": "x"})]})
        assert got == status == body["error"]["code"]
        parsed = rpc_status(body)
        retry = error_details_pb2.RetryInfo()
        delays = [retry.retry_delay.ToTimedelta().total_seconds() for d in parsed.details if d.Unpack(retry)]
        assert delays == ([delay] if delay is not None else [])
    assert (await post(http, url(fake, "generateContent"), {"contents": [user({"text": "x"})]}))[0] == 200


@pytest.mark.parametrize("failure, status", [(failures.server_error(502), 502), (failures.timeout(408), 408)])
async def test_front_end_failures_are_html(fake: FakeGoogle, http: aiohttp.ClientSession, failure: Any,
                                           status: int) -> None:
    fake.fail_next(failure)
    async with http.post(url(fake, "generateContent"), data=b"{}") as response:
        assert response.status == status and response.content_type == "text/html"


async def test_in_stream_error_event(fake: FakeGoogle, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.in_stream(after_chunks=2, type_="rate_limit_error"))
    async with http.post(url(fake, "streamGenerateContent") + "?alt=sse",
                         data=orjson.dumps({"contents": [user({"text": "a b c d"})]})) as response:
        raw = (await response.read()).decode()
    blocks = [b.removeprefix("data: ") for b in raw.split("\r\n\r\n") if b]
    assert len(blocks) == 3
    for block in blocks[:2]:
        types.GenerateContentResponse.model_validate_json(block)
    error = orjson.loads(blocks[-1])
    assert rpc_status(error).code == 8 and error["error"]["status"] == "RESOURCE_EXHAUSTED"


async def test_hold_and_disconnect_are_seen(fake: FakeGoogle) -> None:
    fake.hold_streams()
    session = aiohttp.ClientSession(headers={"x-goog-api-key": KEY})
    response = await session.post(url(fake, "streamGenerateContent") + "?alt=sse",
                                  data=orjson.dumps({"contents": [user({"text": "a b c"})]}))
    first = await response.content.readuntil(b"\r\n\r\n")
    assert first.startswith(b"data: {")
    response.close()
    await fake.wait_for_disconnect()
    assert fake.disconnects == 1
    await session.close()


async def test_chunk_delay_spaces_events(fake: FakeGoogle, http: aiohttp.ClientSession) -> None:
    fake.chunk_delay_s = 0.02
    loop = asyncio.get_running_loop()
    arrivals = []
    async with http.post(url(fake, "streamGenerateContent") + "?alt=sse",
                         data=orjson.dumps({"contents": [user({"text": "a b c"})]})) as response:
        async for _ in response.content.iter_any():
            arrivals.append(loop.time())
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] >= 0.04


async def test_reset_forgets_everything(fake: FakeGoogle, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.unavailable())
    fake.hold_streams()
    fake.reset()
    assert (await post(http, url(fake, "generateContent"), {"contents": [user({"text": "x"})]}))[0] == 200
    fake.reset()
    assert not fake.requests and fake.disconnects == 0


def test_signature_is_base64_of_bytes() -> None:
    part = payloads.Reply(text=None, call={"name": "f", "args": {}}).part()
    assert base64.b64decode(part["thoughtSignature"]) == b"fake-thought:f"
    assert types.Part.model_validate(part).thought_signature == b"fake-thought:f"
    assert json_format.ParseDict({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"},
                                 any_pb2.Any()).TypeName() == "google.rpc.RetryInfo"


def test_standalone_process_prints_port_and_serves() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.google_upstream", "--port", "0",
                                "--api-key", KEY], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())

        async def ask() -> Any:
            async with aiohttp.ClientSession(headers={"x-goog-api-key": KEY}) as session:
                return (await post(session, f"http://127.0.0.1:{port}/v1beta/models/m:generateContent",
                                   {"contents": [user({"text": "ping"})]}))[1]

        assert text_of(types.GenerateContentResponse.model_validate(asyncio.run(ask()))) == "ping"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()


async def test_the_official_client_talks_to_the_fake(fake: FakeGoogle) -> None:
    """google-genai itself (not only its types) reads every answer of the fake."""
    options = types.HttpOptions(base_url=fake.base_url, api_version="v1beta")
    client = genai.Client(api_key=KEY, http_options=options).aio
    wrong = genai.Client(api_key="AIza-wrong", http_options=options).aio
    try:
        config = types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2)
        answer = await client.models.generate_content(model="gemini-2.0-flash", contents="hello there",
                                                      config=config)
        assert answer.text == "hello there" and answer.model_version == "gemini-2.0-flash-001"
        events = [e async for e in await client.models.generate_content_stream(model="m", contents="a b c")]
        assert [e.text for e in events] == ["a ", "b ", "c"]
        embedded = await client.models.embed_content(
            model="gemini-embedding-001", contents=["a", "b c"],
            config=types.EmbedContentConfig(output_dimensionality=4))
        assert [len(e.values or []) for e in embedded.embeddings or []] == [4, 4]
        with pytest.raises(errors.ClientError) as info:
            await wrong.models.generate_content(model="m", contents="x")
        assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    finally:
        await client.aclose()
        await wrong.aclose()
