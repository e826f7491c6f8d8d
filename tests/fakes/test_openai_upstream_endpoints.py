"""The fake's legacy completions and image endpoints speak OpenAI's real format: every payload is
validated with the official `openai` package's types (the chat and embeddings endpoints, and the
fake's scripting, are tested in test_openai_upstream.py)."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any, Literal

import aiohttp
import orjson
from openai.types import Completion, CompletionChoice, ImagesResponse

from tests.fakes import openai_failures as failures
from tests.fakes import openai_payloads as payloads
from tests.fakes.client import post
from tests.fakes.openai_upstream import FakeOpenAI


# -- legacy completions ----------------------------------------------------------------------------
class CompletionChunkChoice(CompletionChoice):
    """A streamed choice: OpenAI sends `finish_reason: null` until the last one (the SDK's type, shared
    by both shapes, does not say so)."""

    finish_reason: Literal["stop", "length", "content_filter"] | None = None  # type: ignore[assignment]


class CompletionChunk(Completion):
    choices: list[CompletionChunkChoice]  # type: ignore[assignment]


async def text_stream(http: aiohttp.ClientSession, fake: FakeOpenAI,
                      body: dict[str, Any]) -> list[CompletionChunk]:
    """Posts a completions stream and validates every event; asserts the `[DONE]` ending."""
    async with http.post(f"{fake.base_url}/completions", json={**body, "stream": True}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    events = [block.removeprefix("data: ") for block in raw.split("\n\n") if block]
    assert events[-1] == "[DONE]"
    return [CompletionChunk.model_validate_json(e) for e in events[:-1]]


async def test_text_completion_validates(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    status, raw = await post(http, f"{fake.base_url}/completions",
                             {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"})
    assert status == 200
    completion = Completion.model_validate_json(raw)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == "gpt-3.5-turbo-instruct"
    [choice] = completion.choices
    assert (choice.text, choice.finish_reason, choice.logprobs) == (" Say this is a test", "stop", None)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 6)
    assert completion.usage.total_tokens == 11


async def test_text_completion_echo_suffix_stop_and_limits(fake: FakeOpenAI,
                                                           http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}/completions"
    _, raw = await post(http, url, {"model": "m", "prompt": "def f():", "echo": True, "suffix": "return 1"})
    assert Completion.model_validate_json(raw).choices[0].text == "def f(): def f(): [before return 1]"
    _, raw = await post(http, url, {"model": "m", "prompt": "alpha beta STOP gamma", "stop": "STOP"})
    assert Completion.model_validate_json(raw).choices[0].text == " alpha beta "
    _, raw = await post(http, url, {"model": "m", "prompt": "a b c d e", "max_tokens": 3})
    choice = Completion.model_validate_json(raw).choices[0]
    assert (choice.text, choice.finish_reason) == (" a b ", "length")
    long_prompt = " ".join(f"w{i}" for i in range(30))
    _, raw = await post(http, url, {"model": "m", "prompt": long_prompt})  # OpenAI's default: 16 tokens
    completion = Completion.model_validate_json(raw)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 16  # type: ignore[union-attr]


async def test_text_completion_many_prompts_n_and_token_ids(fake: FakeOpenAI,
                                                            http: aiohttp.ClientSession) -> None:
    _, raw = await post(http, f"{fake.base_url}/completions",
                        {"model": "m", "prompt": ["one", "two three"], "n": 2})
    completion = Completion.model_validate_json(raw)
    assert [(c.index, c.text) for c in completion.choices] == [
        (0, " one"), (1, " one"), (2, " two three"), (3, " two three")]
    assert completion.usage is not None and completion.usage.prompt_tokens == 3
    _, raw = await post(http, f"{fake.base_url}/completions", {"model": "m", "prompt": [[11, 22], [33]]})
    completion = Completion.model_validate_json(raw)
    assert [c.text for c in completion.choices] == [" 11 22", " 33"]
    assert completion.usage is not None and completion.usage.prompt_tokens == 3


async def test_text_completion_logprobs(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    _, raw = await post(http, f"{fake.base_url}/completions",
                        {"model": "m", "prompt": "hi there", "echo": True, "logprobs": 3})
    choice = Completion.model_validate_json(raw).choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and "".join(logprobs.tokens or []) == choice.text == "hi there hi there"
    assert logprobs.text_offset == [0, 3, 8, 9, 12]
    assert all(len(top) == 3 for top in logprobs.top_logprobs or [])
    assert all(lp < 0 for lp in logprobs.token_logprobs or [])


async def test_text_completion_stream(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    chunks = await text_stream(http, fake, {"model": "m", "prompt": "one two", "echo": True, "logprobs": 1,
                                            "stream_options": {"include_usage": True}})
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two one two"
    assert chunks[0].choices[0].text == "one two"  # the echo comes first
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].choices[0].text == ""
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 3)
    assert all(c.usage is None for c in chunks[:-1]) and len({c.id for c in chunks}) == 1
    assert chunks[1].choices[0].logprobs is not None and chunks[1].choices[0].logprobs.text_offset == [7]
    async with http.post(f"{fake.base_url}/completions",
                         json={"model": "m", "prompt": "x", "stream": True}) as response:
        assert b'"usage"' not in await response.read()


async def test_text_completion_failures(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.rate_limited(4))
    async with http.post(f"{fake.base_url}/completions", json={"model": "m", "prompt": "x"}) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "4"
    fake.fail_next(failures.in_stream(after_chunks=1))
    async with http.post(f"{fake.base_url}/completions",
                         json={"model": "m", "prompt": "a b c", "stream": True}) as response:
        events = [b.removeprefix(b"data: ") for b in (await response.read()).split(b"\n\n") if b]
    assert len(events) == 2 and orjson.loads(events[-1])["error"]["type"] == "server_error"
    assert [r.path for r in fake.requests] == ["/v1/completions", "/v1/completions"]


# -- images -------------------------------------------------------------------------------------------
def check_png(encoded: str) -> None:
    """A decodable PNG: signature, chunk CRCs, and pixel data that inflates."""
    data = base64.b64decode(encoded)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, kinds = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + body) == crc
        if kind == b"IDAT":
            assert len(zlib.decompress(body)) == 4  # filter byte + one RGB pixel
        kinds.append(kind)
        offset += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]


async def test_image_generation_dalle_and_gpt_image(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}/images/generations"
    _, raw = await post(http, url, {"model": "dall-e-2", "prompt": "a cat", "n": 2})
    images = ImagesResponse.model_validate_json(raw)
    assert [bool(d.url) for d in images.data or []] == [True, True] and images.usage is None
    _, raw = await post(http, url, {"model": "dall-e-3", "prompt": "a cat", "response_format": "b64_json"})
    [image] = ImagesResponse.model_validate_json(raw).data or []
    assert image.revised_prompt == "A picture of a cat" and image.b64_json is not None
    check_png(image.b64_json)
    _, raw = await post(http, url, {"model": "gpt-image-1", "prompt": "a small red cat", "quality": "low",
                                    "n": 3, "size": "1024x1536"})
    images = ImagesResponse.model_validate_json(raw)
    assert len(images.data or []) == 3 and all(d.b64_json and not d.url for d in images.data or [])
    assert (images.quality, images.size, images.output_format, images.background) == (
        "low", "1024x1536", "png", "opaque")
    assert images.usage is not None
    assert (images.usage.input_tokens, images.usage.output_tokens, images.usage.total_tokens) == (
        4, 3 * 272, 4 + 3 * 272)
    assert images.usage.input_tokens_details.text_tokens == 4
    assert fake.requests[-1].json["quality"] == "low"


def upload_form(fields: dict[str, str], files: list[tuple[str, str, str, bytes]]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, filename, content_type, data in files:
        form.add_field(name, data, filename=filename, content_type=content_type)
    return form


async def test_image_edit_records_fields_and_files(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    picture, mask = payloads.png((1, 2, 3)), payloads.png((0, 0, 0))
    files = [("image[]", "cat.png", "image/png", picture), ("image[]", "dog.png", "image/png", picture),
             ("mask", "mask.png", "image/png", mask)]
    form = upload_form({"model": "gpt-image-1", "prompt": "add a hat", "n": "2"}, files)
    async with http.post(f"{fake.base_url}/images/edits", data=form) as response:
        assert response.status == 200
        images = ImagesResponse.model_validate_json(await response.read())
    assert len(images.data or []) == 2 and images.usage is not None
    assert images.usage.input_tokens_details.image_tokens == 2 * payloads.IMAGE_INPUT_TOKENS
    seen = fake.requests[-1]
    assert seen.path == "/v1/images/edits"
    assert seen.json == {"model": "gpt-image-1", "prompt": "add a hat", "n": "2"}
    assert [(f.field, f.filename, f.content_type, f.data) for f in seen.files] == files


async def test_image_variation_and_upload_errors(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    form = upload_form({"model": "dall-e-2", "response_format": "b64_json"},
                       [("image", "cat.png", "image/png", payloads.png())])
    async with http.post(f"{fake.base_url}/images/variations", data=form) as response:
        [image] = ImagesResponse.model_validate_json(await response.read()).data or []
    assert image.b64_json is not None
    check_png(image.b64_json)
    no_prompt = upload_form({"model": "dall-e-2"}, [("image", "a.png", "image/png", b"x")])
    async with http.post(f"{fake.base_url}/images/edits", data=no_prompt) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "prompt"
    async with http.post(f"{fake.base_url}/images/edits", json={"prompt": "x"}) as r:
        assert r.status == 400 and "multipart/form-data" in (await r.json())["error"]["message"]
    fake.fail_next(failures.server_error(502))
    async with http.post(f"{fake.base_url}/images/variations",
                         data=upload_form({}, [("image", "a.png", "image/png", b"x")])) as r:
        assert r.status == 502 and (await r.json())["error"]["type"] == "server_error"
    fake.fail_next(failures.bad_request("Invalid size.", "size", "invalid_value"))
    status, raw = await post(http, f"{fake.base_url}/images/generations", {"prompt": "x", "size": "7x7"})
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "size"
