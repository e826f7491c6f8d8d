"""The providers the conformance suite runs over, and what each one declares it cannot do.

Adding a provider kind: a `profile_<kind>.py` module exporting `PROFILES` (listed in
`PROVIDER_PROFILE_MODULES`), with a fake upstream speaking its wire format, its scripted failures
(the function names of `tests.fakes.openai_failures`), a `WireView` subclass reading its recorded
requests, and `cannot` (case -> why) for each case the provider truly cannot do. Then regenerate
the table: `.venv/bin/python -m tests.conformance.table --write`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from tests.conformance.cases import CASES, ERROR_CASES, STREAM_ERROR_CASES
from tests.fakes import openai_failures
from tests.fakes.openai_payloads import content_text
from tests.fakes.openai_upstream import FakeOpenAI

__all__ = ["CASES", "ENVIRON", "ErrorOutcome", "MODEL_ALIASES", "OPENAI_PROFILES", "OpenAIWireView",
           "PROFILES", "ProviderProfile", "WireView", "same_json"]

# Every fake that names a model in its answers reports these for the suite's upstream models, as
# OpenAI reports a dated snapshot: so a test sees the upstream's answer, not the route's name.
MODEL_ALIASES: Mapping[str, str] = MappingProxyType({"gpt-4o-mini": "gpt-4o-mini-2024-07-18"})


class WireView:
    """One recorded upstream request, read in the suite's (OpenAI's) terms.

    The cases read a request only through these methods, one set for every provider; a provider's
    subclass answers each from its own wire (a Gemini model in the URL, an Anthropic tool as
    `input_schema`, a key in `x-api-key`). `recorded` is the fake's RecordedRequest (`path`,
    lower-case `headers`, `json`).
    """

    def __init__(self, recorded: Any) -> None:
        self.recorded = recorded
        self.path: str = recorded.path
        self.body: Any = recorded.json
        self.headers: Mapping[str, str] = recorded.headers

    @classmethod
    def reported_model(cls, upstream_model: str) -> str:
        """The model the upstream's answer names when asked for `upstream_model`."""
        return MODEL_ALIASES.get(upstream_model, upstream_model)

    def request_id(self) -> str | None:
        """Every adapter sends the gateway's request id as `X-Request-Id`."""
        return self.headers.get("x-request-id")

    def upstream_model(self) -> str:
        """The model the request asked for."""
        raise NotImplementedError

    def temperature(self) -> float | None:
        """The sampling temperature sent, None without one."""
        raise NotImplementedError

    def roles(self) -> list[str]:
        """The roles of the conversation's turns in order ("assistant" for the model's)."""
        raise NotImplementedError

    def system_text(self) -> str:
        """The system instruction's text."""
        raise NotImplementedError

    def stop(self) -> list[str]:
        """The stop sequences sent."""
        raise NotImplementedError

    def image_urls(self) -> list[str]:
        """Each image sent, as the URL the client gave (inline data as its data URL)."""
        raise NotImplementedError

    def tools(self) -> list[dict[str, Any]]:
        """The tools offered, as OpenAI tool definitions."""
        raise NotImplementedError

    def assistant_tool_calls(self) -> list[dict[str, Any]]:
        """The assistant turns' tool calls, as OpenAI tool calls (compact JSON arguments)."""
        raise NotImplementedError

    def tool_result_ids(self) -> list[str]:
        """The tool-call ids the tool results answer."""
        raise NotImplementedError

    def json_output(self) -> tuple[bool, Any]:
        """Whether JSON output was asked for, and its schema (None for any JSON object)."""
        raise NotImplementedError

    def asks_stream_usage(self) -> bool:
        """Whether the upstream's stream will report usage (asked, or always)."""
        raise NotImplementedError

    def api_key(self) -> str | None:
        """The key the request carried, None without one."""
        raise NotImplementedError

    def embedding_model(self) -> str | None:
        """The model an embedding request named; None when it is no embedding request."""
        raise NotImplementedError

    def embedding_inputs(self) -> list[Any]:
        """The inputs an embedding request sent, in order."""
        raise NotImplementedError


class OpenAIWireView(WireView):
    """Reads an OpenAI-format request (chat, embeddings) as the upstream received it."""

    def upstream_model(self) -> str:
        return str(self.body["model"])

    def temperature(self) -> float | None:
        return self.body.get("temperature")  # type: ignore[no-any-return]

    def roles(self) -> list[str]:
        return [m["role"] for m in self.body["messages"]]

    def system_text(self) -> str:
        return " ".join(content_text(m["content"])[0] for m in self.body["messages"]
                        if m["role"] in ("system", "developer"))

    def stop(self) -> list[str]:
        stop = self.body.get("stop")
        return [stop] if isinstance(stop, str) else list(stop or [])

    def image_urls(self) -> list[str]:
        return [p["image_url"]["url"] for m in self.body["messages"] if isinstance(m.get("content"), list)
                for p in m["content"] if p.get("type") == "image_url"]

    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools") or [])

    def assistant_tool_calls(self) -> list[dict[str, Any]]:
        return [c for m in self.body["messages"] if m["role"] == "assistant"
                for c in m.get("tool_calls") or []]

    def tool_result_ids(self) -> list[str]:
        return [m["tool_call_id"] for m in self.body["messages"] if m["role"] == "tool"]

    def json_output(self) -> tuple[bool, Any]:
        wanted = self.body.get("response_format") or {}
        asked = wanted.get("type") in ("json_object", "json_schema")
        return asked, (wanted.get("json_schema") or {}).get("schema")

    def asks_stream_usage(self) -> bool:
        return bool((self.body.get("stream_options") or {}).get("include_usage"))

    def api_key(self) -> str | None:
        value = self.headers.get("authorization")
        return value.removeprefix("Bearer ") if value is not None else None

    def embedding_model(self) -> str | None:
        return str(self.body["model"]) if self.path == "/v1/embeddings" else None

    def embedding_inputs(self) -> list[Any]:
        value = self.body["input"]
        return [value] if isinstance(value, str) else list(value)


def same_json(left: Any, right: Any) -> bool:
    """Equal as JSON text: unlike `==`, 100 and 100.0 differ (integers must stay integers)."""
    return orjson.dumps(left, option=orjson.OPT_SORT_KEYS) == orjson.dumps(right, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class ErrorOutcome:
    """What a provider's error gives for one error class (an ERROR_CASES or STREAM_ERROR_CASES name)
    where its error model differs from OpenAI's: the GatewayError attributes replacing the shared
    expectation, and why. For a class whose case the provider declares out, it is what the nearest
    thing the provider does send yields instead (tested too)."""

    why: str
    expect: Mapping[str, Any]


@dataclass(frozen=True)
class ProviderProfile:
    """One provider kind (and key set-up) under test, and what it declares."""

    id: str
    kind: str
    api_key_env: str  # "" for a keyless server
    api_key: str | None  # what the fake demands, None for no check
    failures: Any  # scripted failures under `openai_failures`' function names
    wire: type[WireView]
    make_fake: Callable[[ProviderProfile], Any]  # a fake with FakeOpenAI's scripting interface
    cannot: Mapping[str, str] = field(default_factory=dict)  # case -> why not (the table's cell)
    streams_tool_arguments: bool = True  # False: a streamed tool call arrives whole, in one delta
    error_outcomes: Mapping[str, ErrorOutcome] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)  # supported case -> how it runs differently

    def __post_init__(self) -> None:
        unknown = set(self.cannot) - set(CASES)
        assert not unknown, f"{self.id}: unknown cases {sorted(unknown)}"
        assert set(self.notes) <= set(CASES) - set(self.cannot), f"{self.id}: notes on cases it does not run"
        assert all(why.strip() and "\n" not in why and "|" not in why for why in self.cannot.values())
        unknown = set(self.error_outcomes) - set(ERROR_CASES) - set(STREAM_ERROR_CASES)
        assert not unknown, f"{self.id}: unknown error classes {sorted(unknown)}"

    @property
    def supports(self) -> frozenset[str]:
        """Every case but those declared out."""
        return frozenset(CASES) - frozenset(self.cannot)

    def __str__(self) -> str:
        return self.id


def _openai_fake(profile: ProviderProfile) -> FakeOpenAI:
    return FakeOpenAI(api_key=profile.api_key, model_aliases=dict(MODEL_ALIASES))


OPENAI_PROFILES: tuple[ProviderProfile, ...] = (
    ProviderProfile("openai", "openai", "CONFORMANCE_OPENAI_KEY", "sk-conformance-openai-0123456789",
                    openai_failures, OpenAIWireView, _openai_fake),
    # vLLM / Ollama style: no key at all.
    ProviderProfile("openai_compatible-keyless", "openai_compatible", "", None,
                    openai_failures, OpenAIWireView, _openai_fake),
    # Together / Groq style: an OpenAI-compatible server with its own key.
    ProviderProfile("openai_compatible-keyed", "openai_compatible", "CONFORMANCE_COMPAT_KEY",
                    "sk-conformance-compat-0123456789", openai_failures, OpenAIWireView, _openai_fake),
)

# Other providers' profiles live in their own modules (`profile_<kind>.py`, each exporting
# PROFILES), so adding a provider touches no shared table.
PROVIDER_PROFILE_MODULES = ("tests.conformance.profile_anthropic", "tests.conformance.profile_google",
                            "tests.conformance.profile_cohere")
PROFILES: tuple[ProviderProfile, ...] = OPENAI_PROFILES + tuple(
    profile for name in PROVIDER_PROFILE_MODULES for profile in importlib.import_module(name).PROFILES)

# The environment of the adapter process under test: the keys the profiles name.
ENVIRON = {p.api_key_env: p.api_key for p in PROFILES if p.api_key_env and p.api_key}
