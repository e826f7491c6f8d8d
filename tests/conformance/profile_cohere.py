"""The Cohere profile of the conformance suite: the adapter against `FakeCohere`.

Cases left out, and why (docs/providers/cohere.md, "Conformance", has the table):
- Cohere cannot do them: `errors` (its bodies carry no param, code or context-length signal,
  and it has no 529), `error_in_stream` (no typed in-stream error: only finish_reason ERROR),
  `embeddings` (its token-id input test: Cohere embeds text only).
- The shared checks still read OpenAI's wire where this adapter passes the behaviour itself
  (AWAITING_SHARED_CHECKS): the `provider.model` label expects OpenAI's dated model id, which
  Cohere never reports; `tool_result`, `json_output` and `usage_in_stream` compare the upstream
  body with OpenAI's field names. CohereWireView already reads those for the shared change.
"""

from __future__ import annotations

from typing import Any

from tests.conformance.providers import CASES, ProviderProfile
from tests.fakes import cohere_failures
from tests.fakes.cohere_upstream import FakeCohere
from tests.fakes.openai_payloads import content_text

NOT_FOR_COHERE = frozenset({"errors", "error_in_stream", "embeddings"})
AWAITING_SHARED_CHECKS = frozenset({
    "text", "system_prompt", "multi_turn", "stop", "streaming", "stream_incremental", "tool_call",
    "tool_call_stream", "tool_result", "image_input", "json_output", "usage_in_stream"})
SUPPORTED = CASES - NOT_FOR_COHERE - AWAITING_SHARED_CHECKS


class CohereWireView:
    """Reads a Cohere `/v2/chat` body as the upstream received it."""

    reported_model = "gpt-4o-mini"  # Cohere names no model: answers carry the route's upstream model
    embed_path = "/v2/embed"

    @staticmethod
    def roles(body: dict[str, Any]) -> list[str]:
        return [m["role"] for m in body["messages"]]

    @staticmethod
    def system_text(body: dict[str, Any]) -> str:
        return " ".join(content_text(m["content"])[0] for m in body["messages"] if m["role"] == "system")

    @staticmethod
    def stop(body: dict[str, Any]) -> list[str]:
        return list(body.get("stop_sequences") or [])

    @staticmethod
    def image_urls(body: dict[str, Any]) -> list[str]:
        return [p["image_url"]["url"] for m in body["messages"] if isinstance(m.get("content"), list)
                for p in m["content"] if p.get("type") == "image_url"]

    @staticmethod
    def tool_result_ids(body: dict[str, Any]) -> list[str]:
        return [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]

    @staticmethod
    def tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
        """The tool calls of the assistant messages sent (same shape as OpenAI's)."""
        return [c for m in body["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]

    @staticmethod
    def json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
        """The JSON schema asked for (Cohere: `response_format.json_schema`), None for any JSON."""
        return (body.get("response_format") or {}).get("json_schema")

    @staticmethod
    def asks_usage(body: dict[str, Any]) -> bool:
        """Whether the stream reports usage: Cohere's `message-end` always does."""
        return True

    @staticmethod
    def model(body: dict[str, Any]) -> str:
        return str(body["model"])


def _cohere_fake(profile: ProviderProfile) -> FakeCohere:
    return FakeCohere(api_key=profile.api_key)


PROFILES: tuple[ProviderProfile, ...] = (
    ProviderProfile("cohere", "cohere", "CONFORMANCE_COHERE_KEY", "co-conformance-cohere-0123456789",
                    SUPPORTED, cohere_failures, CohereWireView, _cohere_fake),
)
