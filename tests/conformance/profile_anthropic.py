"""The Anthropic provider in the conformance suite: its profile, its fake, and how to read a
recorded Messages API request (`AnthropicWireView`).

The conformance table row (case -> supported, or why not; docs/providers/anthropic.md has it too):
- text, system_prompt, multi_turn, stop, streaming, stream_incremental, tool_call_stream,
  image_input, error_in_stream, timeout, connect_error, cancellation, request_id: supported as
  written.
- tool_call, tool_result, json_output: supported, but each case also asserts the *OpenAI* request
  shape upstream (`sent["tools"] == [WEATHER_TOOL]`, `sent["messages"][1] == {... "tool_calls"}`,
  `sent["response_format"] == ...`). Anthropic's wire has `tools[].input_schema`, `tool_use`
  blocks and a forced tool instead. `AnthropicWireView.tools / assistant_tool_calls /
  response_format (or json_output)` read those back in OpenAI's shape, for the cases to use.
- usage_in_stream: supported, but one case asserts `sent["stream_options"] == {"include_usage":
  True}`; Anthropic's stream always reports usage and has no such field
  (`AnthropicWireView.asks_stream_usage`).
- credentials: supported, but one case asserts `authorization: Bearer <key>`; Anthropic's key
  travels in `x-api-key` (`AnthropicWireView.api_key(headers)` reads it).
- errors: supported except where Anthropic differs (`ERROR_CASE_OUTCOMES`): its errors carry no
  `param`/`code`, a too-long prompt is a plain invalid_request_error (never matched by wording, so
  UPSTREAM_BAD_REQUEST, not CONTEXT_LENGTH_EXCEEDED), and it never answers 422.
- embeddings, embeddings_base64: Anthropic has no embeddings API (`embed` refuses with
  UNSUPPORTED_PARAMETER, so routing moves to another candidate).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from services.core.errors import Reason
from tests.conformance.providers import CASES, ProviderProfile
from tests.fakes import anthropic_failures
from tests.fakes.anthropic_failures import BAD_REQUEST_MESSAGE, PROMPT_TOO_LONG_MESSAGE
from tests.fakes.anthropic_upstream import FakeAnthropic

# Cases whose assertions read OpenAI's request shape or OpenAI's error fields (see above).
OPENAI_SHAPED_CASES = frozenset({"tool_call", "tool_result", "json_output", "usage_in_stream", "credentials",
                                 "errors"})
NO_EMBEDDINGS = frozenset({"embeddings", "embeddings_base64"})
SUPPORTS = CASES - OPENAI_SHAPED_CASES - NO_EMBEDDINGS

# Error cases whose outcome differs from OpenAI's: case -> what Anthropic yields; None: Anthropic
# has no such failure.
ERROR_CASE_OUTCOMES: Mapping[str, Mapping[str, Any] | None] = MappingProxyType({
    "bad_request": {"reason": Reason.UPSTREAM_BAD_REQUEST, "http_status": 400,
                    "expect": {"param": None, "code": None, "message": BAD_REQUEST_MESSAGE}},
    "context_length": {"reason": Reason.UPSTREAM_BAD_REQUEST, "http_status": 400,
                       "expect": {"param": None, "code": None, "message": PROMPT_TOO_LONG_MESSAGE}},
    "unprocessable": None,
})


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


class AnthropicWireView:
    """Reads an Anthropic Messages request body as the upstream received it."""

    @staticmethod
    def roles(body: dict[str, Any]) -> list[str]:
        return [m["role"] for m in body["messages"]]

    @staticmethod
    def system_text(body: dict[str, Any]) -> str:
        return " ".join(b["text"] for b in _blocks(body.get("system")) if b.get("type") == "text")

    @staticmethod
    def stop(body: dict[str, Any]) -> list[str]:
        return list(body.get("stop_sequences") or [])

    @staticmethod
    def image_urls(body: dict[str, Any]) -> list[str]:
        """Each image block as the URL the client sent (a base64 source as its data URL)."""
        urls = []
        for message in body["messages"]:
            for block in _blocks(message["content"]):
                source = block.get("source") or {}
                if block.get("type") == "image":
                    urls.append(source["url"] if source.get("type") == "url"
                                else f"data:{source['media_type']};base64,{source['data']}")
        return urls

    @staticmethod
    def tool_result_ids(body: dict[str, Any]) -> list[str]:
        return [b["tool_use_id"] for m in body["messages"] if m["role"] == "user"
                for b in _blocks(m["content"]) if b.get("type") == "tool_result"]

    @staticmethod
    def model(body: dict[str, Any]) -> str:
        return str(body["model"])

    @staticmethod
    def tools(body: dict[str, Any]) -> list[dict[str, Any]]:
        """The client tools in OpenAI's shape."""
        out = []
        for tool in body.get("tools") or []:
            function = {"name": tool["name"], "parameters": tool["input_schema"]}
            if "description" in tool:
                function["description"] = tool["description"]
            out.append({"type": "function", "function": function})
        return out

    @staticmethod
    def assistant_tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
        """Every assistant `tool_use` block as an OpenAI tool call (arguments as compact JSON)."""
        return [{"id": b["id"], "type": "function",
                 "function": {"name": b["name"], "arguments": orjson.dumps(b["input"]).decode()}}
                for m in body["messages"] if m["role"] == "assistant"
                for b in _blocks(m["content"]) if b.get("type") == "tool_use"]

    @staticmethod
    def response_format(body: dict[str, Any]) -> dict[str, Any] | None:
        """The OpenAI `response_format` the forced JSON tool stands for (None without one)."""
        choice = body.get("tool_choice") or {}
        tool = next((t for t in body.get("tools") or [] if t["name"] == choice.get("name")), None)
        if choice.get("type") != "tool" or tool is None:
            return None
        if tool["name"] == "json_object" and tool["input_schema"] == {"type": "object"}:
            return {"type": "json_object"}
        spec = {"name": tool["name"], "schema": tool["input_schema"], "strict": bool(tool.get("strict"))}
        return {"type": "json_schema", "json_schema": spec}

    @staticmethod
    def json_output(body: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """Whether JSON output was asked for, and its schema (None for any JSON object)."""
        wanted = AnthropicWireView.response_format(body)
        if wanted is None:
            return False, None
        return True, (wanted.get("json_schema") or {}).get("schema")

    @staticmethod
    def asks_stream_usage(body: dict[str, Any]) -> bool:
        """Whether the upstream stream will report usage: Anthropic's always does."""
        return body.get("stream") is True

    @staticmethod
    def api_key(headers: Mapping[str, str]) -> str | None:
        """The key a recorded request carried (lower-case header names)."""
        return headers.get("x-api-key")


def _fake(profile: ProviderProfile) -> FakeAnthropic:
    return FakeAnthropic(api_key=profile.api_key, model_aliases={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"})


PROFILES: tuple[ProviderProfile, ...] = (
    ProviderProfile("anthropic", "anthropic", "CONFORMANCE_ANTHROPIC_KEY", "sk-ant-conformance-0123456789",
                    SUPPORTS, anthropic_failures, AnthropicWireView, _fake),
)
