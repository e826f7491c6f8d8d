"""A fake Anthropic server over real HTTP, speaking the Messages API's wire format (see
anthropic_payloads.py), with FakeOpenAI's scripting interface:

    async with FakeAnthropic(api_key="sk-ant-test") as fake:  # 127.0.0.1, ephemeral port
        fake.base_url                                         # "http://127.0.0.1:PORT" (the bare host)
        fake.fail_next(anthropic_failures.overloaded())       # scripted failures, in order
        fake.chunk_delay_s = 0.01                             # pause between stream events
        fake.hold_streams(); ...; fake.release_streams()      # a stream waits once its first block started
        fake.requests[-1].json, fake.disconnects              # what it saw

Routes: POST /v1/messages (JSON, or SSE `event:`/`data:` pairs ending with `message_stop`) and
GET /v1/models (the model list, `models_failure` while set). Every
request needs `anthropic-version: 2023-06-01` (else 400, as Anthropic answers) and, when
`api_key` is set, `x-api-key: <api_key>` (else 401 authentication_error). The key is read from
`x-api-key` only: that is what the gateway sends (the 2.x SDK sends `Authorization: Bearer`,
which the fake does not take, so a regression in the adapter's header shows). Bodies are validated
as Anthropic does for the mistakes an adapter could make (unknown fields, no `max_tokens`, empty
text blocks, orphan `tool_result`s, temperature above 1): 400 invalid_request_error.
Standalone: `python -m tests.fakes.anthropic_upstream --port N` prints the port once listening.
The lifecycle, scripting and records are `FakeUpstream`'s (base.py).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import anthropic_payloads as payloads
from tests.fakes.base import Failure, FakeUpstream, RecordedRequest, json_response, run_standalone

__all__ = ["API_VERSION", "FakeAnthropic", "Failure", "RecordedRequest", "main"]

API_VERSION = "2023-06-01"
# Stream events that hand the client a chunk: what `Failure.after_chunks` counts.
CHUNK_EVENTS = frozenset({"content_block_start", "content_block_delta"})
REQUEST_ID = MappingProxyType({"request-id": "req_fake0001"})


class FakeAnthropic(FakeUpstream):
    """The fake server (api_key: when set, requests need "x-api-key: <api_key>"). Not thread-safe:
    use it from the event loop that started it."""

    # Prompt tokens reported as cache reads; an instance attribute once a test sets it.
    cached_prompt_tokens = 0

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self._messages)
        router.add_get("/v1/models", self._models)

    def reset(self) -> None:
        """Forgets scripts, delays, holds, records and cached prompt tokens."""
        super().reset()
        self.cached_prompt_tokens = 0

    # -- handlers ----------------------------------------------------------------------------
    def _refusal(self, request: web.Request, body: Any) -> web.Response | None:
        """Anthropic's own checks, in its order: credentials, version, body, model."""
        early = self._header_refusal(request)
        if early is not None:
            return early
        found = payloads.problem(body)
        if found is not None:
            return _json(400, payloads.error("invalid_request_error", found))
        if self.known_models is not None and body.get("model") not in self.known_models:
            return _json(404, payloads.error("not_found_error", f"model: {body.get('model')}"))
        return None

    def _header_refusal(self, request: web.Request) -> web.Response | None:
        """The checks of every route: the key, then the version."""
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _json(401, payloads.error("authentication_error", "invalid x-api-key"))
        version = request.headers.get("anthropic-version")
        if version != API_VERSION:
            message = ("anthropic-version: header is required" if version is None
                       else f"anthropic-version: invalid version '{version}'")
            return _json(400, payloads.error("invalid_request_error", message))
        return None

    async def _models(self, request: web.Request) -> web.Response:
        """`GET /v1/models`: the key and version checks, then one page of Anthropic's model list."""
        early = await self._models_gate(request)
        if early is None:
            early = self._header_refusal(request)
        return early if early is not None else _json(200, payloads.models_list(["claude-sonnet-4-5"]))

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self._record(request, body)
        failure = await self._scripted_failure()
        if failure is not None and (failure.after_chunks is None or not body.get("stream")):
            return failure.response()
        refusal = self._refusal(request, body)
        if refusal is not None:
            return refusal
        message_id = f"msg_fake{next(self._ids):016d}"
        reported, cached = self._reported_model(str(body.get("model", ""))), self.cached_prompt_tokens
        if not body.get("stream"):
            return _json(200, payloads.message(body, message_id=message_id, model=reported, cached=cached))
        events = payloads.events(body, message_id=message_id, model=reported, cached=cached)
        return await self._stream(
            request, [_sse(event) for event in events], _at_event(failure, events),
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                     **REQUEST_ID},
            failure_frame=_error_event, hold_after=_first_block(events))


def _at_event(failure: Failure | None, events: list[dict[str, Any]]) -> Failure | None:
    """`failure` with `after_chunks` counted in events (it counts content block events only)."""
    if failure is None:
        return None
    chunks = 0
    for i, event in enumerate(events):
        if chunks == failure.after_chunks:
            return dataclasses.replace(failure, after_chunks=i)
        chunks += event["type"] in CHUNK_EVENTS
    return None


def _first_block(events: list[dict[str, Any]]) -> int | None:
    """Where a held stream waits: once its first content block started."""
    return next((i for i, event in enumerate(events) if event["type"] == "content_block_start"), None)


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _error_event(body: bytes) -> bytes:
    return b"event: error\ndata: " + body + b"\n\n"


def _json(status: int, obj: Any) -> web.Response:
    return json_response(status, obj, headers=REQUEST_ID)


def main(argv: list[str] | None = None) -> None:
    """Runs the fake as a process (for the benchmark and for manual use)."""
    run_standalone(FakeAnthropic, argv, description=__doc__.splitlines()[0],
                   key_help="require this x-api-key")


if __name__ == "__main__":
    main()
