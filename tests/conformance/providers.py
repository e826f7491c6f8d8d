"""The providers the conformance suite runs over, and which cases each one supports.

Adding a provider kind: one `ProviderProfile` here, with a fake upstream that speaks its wire
format, its scripted failures (same function names as `tests.fakes.openai_failures`) and a
`WireView` reading the few things the cases check in a recorded upstream request.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from tests.fakes import openai_failures
from tests.fakes.openai_payloads import content_text
from tests.fakes.openai_upstream import FakeOpenAI

CASES = frozenset({
    "text", "system_prompt", "multi_turn", "stop", "streaming", "stream_incremental", "tool_call",
    "tool_call_stream", "tool_result", "image_input", "json_output", "usage_in_stream", "errors",
    "error_in_stream", "timeout", "connect_error", "cancellation", "credentials", "request_id",
    "embeddings", "embeddings_base64",
})


class OpenAIWireView:
    """Reads an OpenAI-format request body as the upstream received it."""

    @staticmethod
    def roles(body: dict[str, Any]) -> list[str]:
        return [m["role"] for m in body["messages"]]

    @staticmethod
    def system_text(body: dict[str, Any]) -> str:
        return " ".join(content_text(m["content"])[0] for m in body["messages"]
                        if m["role"] in ("system", "developer"))

    @staticmethod
    def stop(body: dict[str, Any]) -> list[str]:
        stop = body.get("stop")
        return [stop] if isinstance(stop, str) else list(stop or [])

    @staticmethod
    def image_urls(body: dict[str, Any]) -> list[str]:
        return [p["image_url"]["url"] for m in body["messages"] if isinstance(m.get("content"), list)
                for p in m["content"] if p.get("type") == "image_url"]

    @staticmethod
    def tool_result_ids(body: dict[str, Any]) -> list[str]:
        return [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]

    @staticmethod
    def model(body: dict[str, Any]) -> str:
        return str(body["model"])


@dataclass(frozen=True)
class ProviderProfile:
    """One provider kind (and key set-up) under test."""

    id: str
    kind: str
    api_key_env: str  # "" for a keyless server
    api_key: str | None  # what the fake demands, None for no check
    supports: frozenset[str]
    failures: ModuleType
    wire: Any
    make_fake: Callable[[ProviderProfile], Any]  # a fake with FakeOpenAI's scripting interface

    def __str__(self) -> str:
        return self.id


def _openai_fake(profile: ProviderProfile) -> FakeOpenAI:
    return FakeOpenAI(api_key=profile.api_key, model_aliases={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"})


OPENAI_PROFILES: tuple[ProviderProfile, ...] = (
    ProviderProfile("openai", "openai", "CONFORMANCE_OPENAI_KEY", "sk-conformance-openai-0123456789",
                    CASES, openai_failures, OpenAIWireView, _openai_fake),
    # vLLM / Ollama style: no key at all.
    ProviderProfile("openai_compatible-keyless", "openai_compatible", "", None,
                    CASES, openai_failures, OpenAIWireView, _openai_fake),
    # Together / Groq style: an OpenAI-compatible server with its own key.
    ProviderProfile("openai_compatible-keyed", "openai_compatible", "CONFORMANCE_COMPAT_KEY",
                    "sk-conformance-compat-0123456789", CASES, openai_failures, OpenAIWireView, _openai_fake),
)

# Other providers' profiles live in their own modules (`profile_<kind>.py`, each exporting
# PROFILES), so adding a provider touches no shared table.
PROVIDER_PROFILE_MODULES = ("tests.conformance.profile_anthropic", "tests.conformance.profile_google",
                            "tests.conformance.profile_cohere")
PROFILES: tuple[ProviderProfile, ...] = OPENAI_PROFILES + tuple(
    profile for name in PROVIDER_PROFILE_MODULES if importlib.util.find_spec(name)
    for profile in importlib.import_module(name).PROFILES)

# The environment of the adapter process under test: the keys the profiles name.
ENVIRON = {p.api_key_env: p.api_key for p in PROFILES if p.api_key_env and p.api_key}
