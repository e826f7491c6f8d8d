"""The Anthropic profile of the conformance suite: the adapter against `FakeAnthropic`, and how to
read a recorded Messages API request (`AnthropicWireView`).

What Anthropic cannot do, and where its error model differs from OpenAI's, is declared below; the
table is docs/providers/conformance.md (generated from these declarations).
"""

from __future__ import annotations

from typing import Any

import orjson

from services.core.errors import Reason
from tests.conformance.providers import MODEL_ALIASES, ErrorOutcome, ProviderProfile, WireView
from tests.fakes import anthropic_failures
from tests.fakes.anthropic_failures import BAD_REQUEST_MESSAGE, PROMPT_TOO_LONG_MESSAGE
from tests.fakes.anthropic_upstream import FakeAnthropic

_NO_EMBEDDINGS = "no embeddings API (refused: unsupported_parameter)"
CANNOT = {
    "error_unprocessable": "never answers 422",
    "error_context_length": "no typed context-length error: a too-long prompt is a plain 400",
    "embeddings": _NO_EMBEDDINGS,
    "embeddings_token_ids": _NO_EMBEDDINGS,
    "embeddings_base64": _NO_EMBEDDINGS,
    "completions": "no legacy completions endpoint (refused: unsupported_parameter)",
    "images": "no image generation API (refused: unsupported_parameter)",
}
ERROR_OUTCOMES = {
    "bad_request": ErrorOutcome("Anthropic's errors carry no param or code",
                                {"param": None, "code": None, "message": BAD_REQUEST_MESSAGE}),
    "context_length": ErrorOutcome(
        "a too-long prompt is an ordinary invalid_request_error, told apart only by its wording, which "
        "the gateway never matches", {"reason": Reason.UPSTREAM_BAD_REQUEST, "param": None, "code": None,
                                      "message": PROMPT_TOO_LONG_MESSAGE}),
}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _message_blocks(body: dict[str, Any], role: str, type_: str) -> list[dict[str, Any]]:
    return [b for m in body["messages"] if m["role"] == role
            for b in _blocks(m["content"]) if b.get("type") == type_]


class AnthropicWireView(WireView):
    """Reads an Anthropic Messages request as the upstream received it."""

    def upstream_model(self) -> str:
        return str(self.body["model"])

    def temperature(self) -> float | None:
        return self.body.get("temperature")  # type: ignore[no-any-return]

    def roles(self) -> list[str]:
        return [m["role"] for m in self.body["messages"]]

    def system_text(self) -> str:
        return " ".join(b["text"] for b in _blocks(self.body.get("system")) if b.get("type") == "text")

    def stop(self) -> list[str]:
        return list(self.body.get("stop_sequences") or [])

    def image_urls(self) -> list[str]:
        """Each image block as the URL the client sent (a base64 source as its data URL)."""
        sources = [b["source"] for b in _message_blocks(self.body, "user", "image")]
        return [s["url"] if s["type"] == "url" else f"data:{s['media_type']};base64,{s['data']}"
                for s in sources]

    def tools(self) -> list[dict[str, Any]]:
        out = []
        for tool in self.body.get("tools") or []:
            function = {"name": tool["name"], "parameters": tool["input_schema"]}
            if "description" in tool:
                function["description"] = tool["description"]
            out.append({"type": "function", "function": function})
        return out

    def assistant_tool_calls(self) -> list[dict[str, Any]]:
        return [{"id": b["id"], "type": "function",
                 "function": {"name": b["name"], "arguments": orjson.dumps(b["input"]).decode()}}
                for b in _message_blocks(self.body, "assistant", "tool_use")]

    def tool_result_ids(self) -> list[str]:
        return [b["tool_use_id"] for b in _message_blocks(self.body, "user", "tool_result")]

    def json_output(self) -> tuple[bool, Any]:
        """JSON output is one forced tool whose input schema is the wanted schema; `json_object`
        stands for any JSON object."""
        choice = self.body.get("tool_choice") or {}
        tool = next((t for t in self.body.get("tools") or [] if t["name"] == choice.get("name")), None)
        if choice.get("type") != "tool" or tool is None:
            return False, None
        any_object = tool["name"] == "json_object" and tool["input_schema"] == {"type": "object"}
        return True, None if any_object else tool["input_schema"]

    def asks_stream_usage(self) -> bool:
        return self.body.get("stream") is True  # Anthropic's stream always reports usage

    def api_key(self) -> str | None:
        return self.headers.get("x-api-key")


def _fake(profile: ProviderProfile) -> FakeAnthropic:
    return FakeAnthropic(api_key=profile.api_key, model_aliases=dict(MODEL_ALIASES))


PROFILES: tuple[ProviderProfile, ...] = (
    ProviderProfile("anthropic", "anthropic", "CONFORMANCE_ANTHROPIC_KEY", "sk-ant-conformance-0123456789",
                    anthropic_failures, AnthropicWireView, _fake, cannot=CANNOT,
                    error_outcomes=ERROR_OUTCOMES),
)
