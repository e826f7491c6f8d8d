"""The cut-stream estimate (services/adapters/token_estimate.py): text counted like a byte-pair
tokenizer, images priced per provider from their own dimensions, requests walked whole."""

from __future__ import annotations

import base64
import struct
import zlib

from google.protobuf import json_format

from aggregator.openai.v1 import chat_pb2, completion_pb2
from edge.accounting import RequestRecord
from services.adapters import token_estimate as te


def png(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    crc = struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + crc


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def data_url(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def test_text_is_counted_like_a_tokenizer_not_like_bytes() -> None:
    assert te.text_tokens("") == 0
    assert te.text_tokens("Hello, world! How are you today?") in range(7, 11)  # a BPE tokenizer: 9
    # A script without spaces: about a token a character, where bytes/4 says 0.75.
    japanese = "東京は日本の首都です。"
    assert te.text_tokens(japanese) >= len(japanese)
    # Long words split; a number goes in groups of three digits.
    assert te.text_tokens("internationalization") > te.text_tokens("nation")
    assert te.text_tokens("123456789") == 3


def test_image_sizes_are_read_from_inline_images() -> None:
    assert te.image_size(data_url("png", png(640, 480))) == (640, 480)
    assert te.image_size(data_url("jpeg", jpeg(1920, 1080))) == (1920, 1080)
    gif = b"GIF89a" + struct.pack("<HH", 32, 16) + b"\x00" * 8
    assert te.image_size(data_url("gif", gif)) == (32, 16)
    sizes = (99).to_bytes(3, "little") + (49).to_bytes(3, "little")  # stored minus one
    webp = b"RIFF" + b"\x00" * 4 + b"WEBPVP8X" + b"\x00" * 8 + sizes
    assert te.image_size(data_url("webp", webp)) == (100, 50)
    assert te.image_size("https://example.com/cat.png") == te.DEFAULT_IMAGE_SIZE
    assert te.image_size("data:image/png;base64,!!!not-base64") == te.DEFAULT_IMAGE_SIZE


def test_images_are_priced_as_each_provider_documents() -> None:
    # OpenAI's vision pricing examples: 1024 × 1024 high detail 765, 2048 × 4096 1105, low 85.
    assert te.image_tokens("openai", 1024, 1024) == 765
    assert te.image_tokens("openai_compatible", 2048, 4096) == 1105
    assert te.image_tokens("openai", 4096, 4096, detail="low") == 85
    # Anthropic: width × height / 750 (1092 × 1092 is about 1590), the long edge held to 1568.
    assert te.image_tokens("anthropic", 1092, 1092) == 1590
    assert te.image_tokens("anthropic", 3136, 3136) == te.image_tokens("anthropic", 1568, 1568)
    # Gemini: 258 up to 384 px each way, else 258 per 768 × 768 tile.
    assert te.image_tokens("google", 384, 200) == 258
    assert te.image_tokens("google", 1000, 1000) == 4 * 258


def chat(payload: dict) -> chat_pb2.ChatCompletionRequest:
    return json_format.ParseDict(payload, chat_pb2.ChatCompletionRequest(), ignore_unknown_fields=True)


def test_a_request_with_an_image_is_priced_by_the_image_not_its_base64() -> None:
    picture = data_url("png", png(1024, 1024) + b"\x00" * 400_000)  # a 400 kB picture
    request = chat({"model": "m", "messages": [
        {"role": "system", "content": "You describe pictures."},
        {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                     {"type": "image_url", "image_url": {"url": picture}}]}]})
    openai = te.prompt_tokens(request, "openai")
    assert 765 + 10 < openai < 765 + 40
    assert request.ByteSize() / 4 > 100 * openai  # what bytes/4 would have billed
    assert te.prompt_tokens(request, "anthropic") - openai == 1399 - 765  # 1024² / 750 = 1398.1


def test_tools_and_tool_calls_count_and_completions_prompts_too() -> None:
    bare = chat({"model": "m", "messages": [{"role": "user", "content": "weather?"}]})
    tooled = chat({"model": "m", "messages": [{"role": "user", "content": "weather?"}], "tools": [
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]})
    assert te.prompt_tokens(tooled, "openai") > te.prompt_tokens(bare, "openai") + 10
    completion = completion_pb2.CompletionRequest(model="m")
    json_format.ParseDict({"prompt": "Once upon a time"}, completion, ignore_unknown_fields=True)
    assert te.prompt_tokens(completion, "openai") == te.text_tokens("Once upon a time")


def test_a_cut_stream_is_billed_from_its_text() -> None:
    request = chat({"model": "m", "messages": [{"role": "user", "content": "Tell me a story " * 50}]})
    record = RequestRecord(request_id="r", endpoint="chat.completions", public_model="m", stream=True,
                           request=request, prompt_bytes=request.ByteSize(), upstream_answered=True,
                           content_events=10, content_chars=400)
    event = record.to_event()
    assert event.prompt_tokens == te.prompt_tokens(request, "")
    assert event.completion_tokens == 100  # 400 characters, more than the 10 chunks
    assert te.completion_tokens(0, 3) == 3
