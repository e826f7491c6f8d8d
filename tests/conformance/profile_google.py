"""The Gemini profile of the conformance suite: the `google` adapter against `FakeGoogle`, and how to
read a recorded Gemini request (`GoogleWireView`): "model" turns are the assistant's,
`functionResponse` ids are tool results, inline data is shown again as the data URL it came from,
function declarations as OpenAI tools, the model from the URL.

What Gemini cannot do, and where its error model differs from OpenAI's, is declared below; the
table is docs/providers/conformance.md (generated from these declarations).
"""

from __future__ import annotations

from typing import Any

import orjson

from services.core.errors import Reason
from tests.conformance.providers import MODEL_ALIASES, ErrorOutcome, ProviderProfile, WireView
from tests.fakes import google_failures
from tests.fakes.google_upstream import FakeGoogle

_NO_OVERLOAD = "no 529: an overload is 503 UNAVAILABLE (upstream_unavailable)"
CANNOT = {
    "error_unprocessable": "never answers 422: an unknown field is a 400 INVALID_ARGUMENT",
    "error_context_length": "no typed context-length error: a too-long prompt is a plain 400 "
                            "INVALID_ARGUMENT",
    "error_overloaded": _NO_OVERLOAD,
    "error_in_stream_overloaded": _NO_OVERLOAD,
    "embeddings_token_ids": "embeds text only (refused: unsupported_parameter)",
    "completions": "no legacy completions endpoint (refused: unsupported_parameter)",
    "images": "Gemini image generation is not adapted (refused: unsupported_parameter)",
}
_TEMPERATURE = "* GenerateContentRequest.generation_config.temperature: must be in the range [0.0, 2.0]\n"
_UNAVAILABLE = {"reason": Reason.UPSTREAM_UNAVAILABLE, "http_status": 503}
ERROR_OUTCOMES = {
    "bad_request": ErrorOutcome("Google's errors carry no OpenAI param or code",
                                {"param": None, "code": None, "message": _TEMPERATURE}),
    "unprocessable": ErrorOutcome("an unknown field is Google's 400 INVALID_ARGUMENT", {
        "message": 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'}),
    "context_length": ErrorOutcome(
        "Gemini marks a too-long prompt with no typed reason, and the gateway never matches message text",
        {"reason": Reason.UPSTREAM_BAD_REQUEST, "param": None, "code": None,
         "message": "The input token count (1234567) exceeds the maximum number of tokens allowed "
                    "(1048576)."}),
    "unavailable": ErrorOutcome("Google's 503 carries no Retry-After", {"retry_after": None}),
    "overloaded": ErrorOutcome("Gemini's overload is 503 UNAVAILABLE", {**_UNAVAILABLE, "retry_after": None}),
    "stream_overloaded": ErrorOutcome("Gemini's overload is UNAVAILABLE, in a stream too", _UNAVAILABLE),
}


def _turns(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body.get("contents") or [])


def _parts(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [part[key] for turn in _turns(body) for part in turn.get("parts") or [] if key in part]


class GoogleWireView(WireView):
    """Reads a generateContent / embedContent request as the Gemini upstream received it."""

    def upstream_model(self) -> str:
        """Gemini names the model in the URL: /v1beta/models/<model>:<method>."""
        return str(self.path.rsplit("/", 1)[1].split(":", 1)[0])

    def temperature(self) -> float | None:
        value = (self.body.get("generationConfig") or {}).get("temperature")
        return float(value) if value is not None else None

    def roles(self) -> list[str]:
        return ["assistant" if turn["role"] == "model" else turn["role"] for turn in _turns(self.body)]

    def system_text(self) -> str:
        parts = (self.body.get("systemInstruction") or {}).get("parts") or []
        return " ".join(part.get("text", "") for part in parts)

    def stop(self) -> list[str]:
        return list((self.body.get("generationConfig") or {}).get("stopSequences") or [])

    def image_urls(self) -> list[str]:
        inline = [f"data:{blob['mimeType']};base64,{blob['data']}"
                  for blob in _parts(self.body, "inlineData")]
        return inline + [file["fileUri"] for file in _parts(self.body, "fileData")]

    def tools(self) -> list[dict[str, Any]]:
        fields = (("name", "name"), ("description", "description"), ("parameters", "parametersJsonSchema"))
        return [{"type": "function", "function": {ours: d[theirs] for ours, theirs in fields if theirs in d}}
                for tool in self.body.get("tools") or [] for d in tool.get("functionDeclarations") or []]

    def assistant_tool_calls(self) -> list[dict[str, Any]]:
        calls = [part["functionCall"] for turn in _turns(self.body) if turn["role"] == "model"
                 for part in turn.get("parts") or [] if "functionCall" in part]
        return [{"id": call.get("id"), "type": "function", "function": {
                    "name": call["name"], "arguments": orjson.dumps(call.get("args") or {}).decode()}}
                for call in calls]

    def tool_result_ids(self) -> list[str]:
        return [str(response.get("id")) for response in _parts(self.body, "functionResponse")]

    def json_output(self) -> tuple[bool, Any]:
        config = self.body.get("generationConfig") or {}
        return config.get("responseMimeType") == "application/json", config.get("responseJsonSchema")

    def asks_stream_usage(self) -> bool:
        return True  # Gemini reports usage on every answer and stream without being asked

    def api_key(self) -> str | None:
        return self.headers.get("x-goog-api-key")

    def embedding_model(self) -> str | None:
        method = self.path.rsplit(":", 1)[-1]
        return self.upstream_model() if method in ("embedContent", "batchEmbedContents") else None

    def embedding_inputs(self) -> list[Any]:
        requests = self.body["requests"] if "requests" in self.body else [self.body]
        return [" ".join(p["text"] for p in r["content"]["parts"]) for r in requests]


def _fake(profile: ProviderProfile) -> FakeGoogle:
    return FakeGoogle(api_key=profile.api_key, model_aliases=dict(MODEL_ALIASES), embedding_usage=True)


PROFILES: tuple[ProviderProfile, ...] = (
    ProviderProfile("google", "google", "CONFORMANCE_GOOGLE_KEY", "AIza-conformance-google-0123456789",
                    google_failures, GoogleWireView, _fake, cannot=CANNOT, streams_tool_arguments=False,
                    error_outcomes=ERROR_OUTCOMES),
)
