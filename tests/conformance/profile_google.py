"""The Gemini profile of the conformance suite: the `google` adapter against FakeGoogle.

`GoogleWireView` reads a recorded Gemini request in the suite's (OpenAI) terms: "model" turns are
the assistant's, `functionResponse` ids are tool results, inline data is shown again as the data
URL it came from, function declarations as OpenAI tools. Beyond the methods the shared cases use
today it has those they need to stop reading OpenAI's request directly (`upstream_model`,
`temperature`, `tools`, `assistant_tool_calls`, `json_output`, `asks_stream_usage`, `api_key`,
`embedding_model`); until they do, those cases are in `PENDING_SHARED_CHANGE`. The table of every
case is in docs/providers/google.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tests.conformance.providers import CASES, ProviderProfile
from tests.fakes import google_failures
from tests.fakes.google_upstream import FakeGoogle, RecordedRequest

# Cases Google cannot pass by its nature. (Gemini embeds text only: the token-id embedding test,
# today part of "embeddings", would be the one.)
NOT_APPLICABLE: frozenset[str] = frozenset()
# Cases the adapter passes, but whose shared test reads OpenAI's request body or headers directly,
# or counts OpenAI's chunks or expects OpenAI's error classes (see the docs page).
PENDING_SHARED_CHANGE = frozenset({
    "text", "tool_call", "tool_call_stream", "tool_result", "json_output", "usage_in_stream", "errors",
    "error_in_stream", "credentials", "request_id", "embeddings", "timeout",
})
SUPPORTED = CASES - NOT_APPLICABLE - PENDING_SHARED_CHANGE


def _turns(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body.get("contents") or [])


def _parts(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [part[key] for turn in _turns(body) for part in turn.get("parts") or [] if key in part]


class GoogleWireView:
    """Reads a generateContent request body as the Gemini upstream received it."""

    @staticmethod
    def roles(body: dict[str, Any]) -> list[str]:
        return ["assistant" if turn["role"] == "model" else turn["role"] for turn in _turns(body)]

    @staticmethod
    def system_text(body: dict[str, Any]) -> str:
        parts = (body.get("systemInstruction") or {}).get("parts") or []
        return " ".join(part.get("text", "") for part in parts)

    @staticmethod
    def stop(body: dict[str, Any]) -> list[str]:
        return list((body.get("generationConfig") or {}).get("stopSequences") or [])

    @staticmethod
    def image_urls(body: dict[str, Any]) -> list[str]:
        inline = [f"data:{blob['mimeType']};base64,{blob['data']}" for blob in _parts(body, "inlineData")]
        return inline + [file["fileUri"] for file in _parts(body, "fileData")]

    @staticmethod
    def tool_result_ids(body: dict[str, Any]) -> list[str]:
        return [str(response.get("id")) for response in _parts(body, "functionResponse")]

    @staticmethod
    def model(body: dict[str, Any]) -> str:
        raise AssertionError("Gemini names the model in the URL: use upstream_model(recorded request).")

    @staticmethod
    def upstream_model(recorded: RecordedRequest) -> str:
        return recorded.path.rsplit("/", 1)[1].split(":", 1)[0]

    @staticmethod
    def temperature(body: dict[str, Any]) -> float | None:
        value = (body.get("generationConfig") or {}).get("temperature")
        return float(value) if value is not None else None

    @staticmethod
    def tools(body: dict[str, Any]) -> list[dict[str, Any]]:
        """The function declarations as OpenAI tool definitions."""
        fields = (("name", "name"), ("description", "description"), ("parameters", "parametersJsonSchema"))
        return [{"type": "function", "function": {ours: d[theirs] for ours, theirs in fields if theirs in d}}
                for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []]

    @staticmethod
    def assistant_tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
        """The function calls of the model's turns as OpenAI tool calls."""
        calls = [part["functionCall"] for turn in _turns(body) if turn["role"] == "model"
                 for part in turn.get("parts") or [] if "functionCall" in part]
        return [{"id": call.get("id"), "type": "function", "function": {
                    "name": call["name"], "arguments": orjson.dumps(call.get("args") or {}).decode()}}
                for call in calls]

    @staticmethod
    def json_output(body: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """Whether JSON output was asked for, and its schema."""
        config = body.get("generationConfig") or {}
        return config.get("responseMimeType") == "application/json", config.get("responseJsonSchema")

    @staticmethod
    def asks_stream_usage(body: dict[str, Any]) -> bool:
        return True  # Gemini reports usage on every answer and stream without being asked

    @staticmethod
    def api_key(headers: Mapping[str, str]) -> str | None:
        """The key a recorded request carried (lower-case header names)."""
        return headers.get("x-goog-api-key")

    @staticmethod
    def embedding_model(recorded: RecordedRequest) -> str:
        return GoogleWireView.upstream_model(recorded)


def _fake(profile: ProviderProfile) -> FakeGoogle:
    # The suite's upstream model names are OpenAI's; the fake answers to any name.
    return FakeGoogle(api_key=profile.api_key, model_aliases={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"},
                      embedding_usage=True)


PROFILES: tuple[ProviderProfile, ...] = (
    ProviderProfile("google", "google", "CONFORMANCE_GOOGLE_KEY", "AIza-conformance-google-0123456789",
                    SUPPORTED, google_failures, GoogleWireView, _fake),
)
