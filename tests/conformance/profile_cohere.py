"""The Cohere profile of the conformance suite: the adapter against `FakeCohere`, and how to read a
recorded `/v2/chat` or `/v2/embed` request (`CohereWireView`).

What Cohere cannot do, and where its error model differs from OpenAI's, is declared below; the
table is docs/providers/conformance.md (generated from these declarations).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.core.errors import Reason
from tests.conformance.providers import ErrorOutcome, OpenAIWireView, ProviderProfile
from tests.fakes import cohere_failures
from tests.fakes.cohere_upstream import FakeCohere
from tests.fakes.openai_upstream import Failure

_NO_TYPED_STREAM_ERROR = "no typed in-stream error: a failed generation ends with finish_reason ERROR"
CANNOT = {
    "error_context_length": "no typed context-length error: a too-long prompt is a plain 400",
    "error_overloaded": "never answers 529",
    "error_in_stream_rate_limit": _NO_TYPED_STREAM_ERROR,
    "error_in_stream_overloaded": _NO_TYPED_STREAM_ERROR,
    "embeddings_token_ids": "embeds text only (refused: unsupported_parameter)",
    "completions": "no legacy completions endpoint (refused: unsupported_parameter)",
    "images": "no image generation API (refused: unsupported_parameter)",
}
ERROR_OUTCOMES = {
    "bad_request": ErrorOutcome("Cohere's errors are a bare message: no param or code", {
        "param": None, "code": None, "message": "invalid request: temperature must be between 0 and 5"}),
    "context_length": ErrorOutcome(
        "a too-long prompt is an ordinary 400 message, and the gateway never matches message text",
        {"reason": Reason.UPSTREAM_BAD_REQUEST, "param": None, "code": None,
         "message": "too many tokens: total number of tokens in the prompt cannot exceed 128000 - received "
                    "130000. Try using a shorter prompt"}),
}

NOTES = {"error_in_stream": "scripted as Cohere's only in-stream failure, a `message-end` with finish_reason "
                            "ERROR (Cohere has no error event)"}


def _in_stream(after_chunks: int = 2, type_: str = "server_error") -> Failure:
    """The suite's in-stream server error as Cohere fails a stream: a `message-end` whose
    finish_reason is ERROR, after the same `after_chunks` chunks (Cohere's `message-start` makes
    none, so one event more)."""
    assert type_ == "server_error", f"Cohere has no in-stream {type_}"
    return cohere_failures.in_stream(after_chunks + 1, "ERROR")


# cohere_failures under the suite's names: its own, except the in-stream failure.
FAILURES = SimpleNamespace(**{name: getattr(cohere_failures, name) for name in (
    "unauthorized", "forbidden", "rate_limited", "bad_request", "context_length_exceeded", "unprocessable",
    "model_not_found", "server_error", "unavailable", "timeout")}, in_stream=_in_stream)


class CohereWireView(OpenAIWireView):
    """Reads a Cohere `/v2/chat` or `/v2/embed` body as the upstream received it: OpenAI's message
    shapes, with Cohere's own names for stop sequences, JSON output, streaming usage and embeddings."""

    @classmethod
    def reported_model(cls, upstream_model: str) -> str:
        return upstream_model  # Cohere names no model: answers carry the route's upstream model

    def stop(self) -> list[str]:
        return list(self.body.get("stop_sequences") or [])

    def json_output(self) -> tuple[bool, Any]:
        """`json_object`, with the schema in `response_format.json_schema` when one is asked."""
        wanted = self.body.get("response_format") or {}
        return wanted.get("type") == "json_object", wanted.get("json_schema")

    def asks_stream_usage(self) -> bool:
        return self.body.get("stream") is True  # Cohere's `message-end` always reports usage

    def embedding_model(self) -> str | None:
        return str(self.body["model"]) if self.path == "/v2/embed" else None

    def embedding_inputs(self) -> list[Any]:
        return list(self.body["texts"])


def _cohere_fake(profile: ProviderProfile) -> FakeCohere:
    return FakeCohere(api_key=profile.api_key)


PROFILES: tuple[ProviderProfile, ...] = (
    ProviderProfile("cohere", "cohere", "CONFORMANCE_COHERE_KEY", "co-conformance-cohere-0123456789",
                    FAILURES, CohereWireView, _cohere_fake, cannot=CANNOT, error_outcomes=ERROR_OUTCOMES,
                    notes=NOTES),
)
