"""A fake Cohere API v2 server over real HTTP (see cohere_payloads.py for what it answers).

    async with FakeCohere(api_key="co-test") as fake:    # 127.0.0.1, ephemeral port
        fake.base_url                                     # "http://127.0.0.1:PORT" (the bare host)
        fake.fail_next(cohere_failures.rate_limited(2))   # scripted failures, in order
        fake.chunk_delay_s = 0.01                         # pause between stream events
        fake.hold_streams(); ...; fake.release_streams()  # a stream waits after its opening
        fake.requests[-1].json, fake.disconnects          # what it saw

Routes: POST /v2/chat (JSON, or with `"stream": true` SSE events `event: <type>` +
`data: {"type": <type>, ...}`, then `data: [DONE]`), POST /v2/embed and GET /v1/models (the
model list, `models_failure` while set). Requests need
`Authorization: Bearer <api_key>` when `api_key` is set (401 `{"message": "invalid api token"}`
otherwise). A field Cohere does not define, or a missing required one, is a 400 `{"message"}`:
the adapter's mistakes show up here as they would against Cohere.
A held stream stops after its opening: `message-start` and the first block's first event.
Standalone: `python -m tests.fakes.cohere_upstream --port N` prints the port once listening.
The lifecycle, scripting and records are `FakeUpstream`'s (base.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.fakes import cohere_payloads as payloads
from tests.fakes.base import Failure, FakeUpstream, RecordedRequest, json_response, run_standalone

__all__ = ["CHAT_FIELDS", "EMBED_FIELDS", "HOLD_AFTER_EVENTS", "KNOWN", "REQUIRED", "FakeCohere", "Failure",
           "RecordedRequest", "main"]

# The request fields of the SDK's `v2.chat` / `v2.embed` (cohere 7.3), and the required ones.
CHAT_FIELDS = frozenset({
    "model", "messages", "stream", "tools", "strict_tools", "documents", "citation_options",
    "response_format", "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed",
    "frequency_penalty", "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking", "priority"})
EMBED_FIELDS = frozenset({"model", "input_type", "texts", "images", "inputs", "max_tokens",
                          "output_dimension", "embedding_types", "truncate", "priority"})
REQUIRED = {"/v2/chat": ("model", "messages"), "/v2/embed": ("model", "input_type")}
KNOWN = {"/v2/chat": CHAT_FIELDS, "/v2/embed": EMBED_FIELDS}
HOLD_AFTER_EVENTS = 2  # message-start and the first block's first event


class FakeCohere(FakeUpstream):
    """The fake server. Not thread-safe: use it from the event loop that started it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 known_models: set[str] | None = None, record: bool = True,
                 chunk_delay_s: float = 0.0) -> None:
        # No model aliases: Cohere reports no model name in its answers.
        super().__init__(host=host, port=port, api_key=api_key, known_models=known_models, record=record,
                         chunk_delay_s=chunk_delay_s)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v2/chat", self._chat)
        router.add_post("/v2/embed", self._embed)
        router.add_get("/v1/models", self._models)

    # -- handlers ----------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        """`GET /v1/models`: the key check, then one page of Cohere's model list."""
        early = await self._models_gate(request)
        header = request.headers.get("Authorization")
        if early is None and self.api_key is not None and header != f"Bearer {self.api_key}":
            message = "no api key supplied" if not header else "invalid api token"
            early = json_response(401, payloads.error(message))
        return early if early is not None else json_response(200, payloads.models_list(["command-r-plus"]))

    async def _admit(self, request: web.Request) -> tuple[Any, web.Response | Failure | None]:
        """Parses and records a request; returns its JSON and the early answer, if any."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None, json_response(400, payloads.error("invalid request: the body is not valid JSON"))
        self._record(request, body)
        failure = await self._scripted_failure()
        if failure is not None:
            return body, failure.response() if failure.after_chunks is None else failure
        return body, self._refusal(request, body)

    def _refusal(self, request: web.Request, body: Any) -> web.Response | None:
        header = request.headers.get("Authorization")
        if self.api_key is not None and header != f"Bearer {self.api_key}":
            message = "no api key supplied" if not header else "invalid api token"
            return json_response(401, payloads.error(message))
        if not isinstance(body, dict):
            return json_response(400, payloads.error("invalid request: the body must be a JSON object"))
        unknown = sorted(set(body) - KNOWN[request.path])
        missing = [name for name in REQUIRED[request.path] if name not in body]
        if unknown or missing:
            problem = f"unknown field: {unknown[0]}" if unknown else f"missing required field: {missing[0]}"
            return json_response(400, payloads.error(f"invalid request: {problem}"))
        if self.known_models is not None and body["model"] not in self.known_models:
            message = (f"model '{body['model']}' not found, make sure the correct model ID was used and "
                       "that you have access to the model.")
            return json_response(404, payloads.error(message))
        return None

    def _response_id(self) -> str:
        return f"0f1e2d3c-fake-4000-8000-{next(self._ids):012d}"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        response_id = self._response_id()
        if not body.get("stream"):
            answer = payloads.chat_response(body, response_id=response_id)
            if isinstance(early, Failure):  # a generation that failed upstream, answered whole
                answer = _failed_answer(answer, early)
            return json_response(200, answer)
        return await self._sse(request, payloads.stream_events(body, response_id=response_id), early)

    async def _sse(self, request: web.Request, events: list[payloads.StreamEvent],
                   failure: Failure | None) -> web.StreamResponse:
        """`event:`/`data:` pairs ending with `data: [DONE]`; a held stream waits after its opening."""
        return await self._stream(
            request, (_event(name, orjson.dumps(data)) for name, data in events), failure,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            failure_frame=_failed_end, hold_after=HOLD_AFTER_EVENTS - 1, end=b"data: [DONE]\n\n")

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        return json_response(200, payloads.embed_response(body, response_id=self._response_id()))


def _event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _failed_end(body: bytes) -> bytes:
    """The in-stream failure: its `message-end`, then `[DONE]`; an empty body cuts the stream there."""
    return _event(orjson.loads(body)["type"], body) + b"data: [DONE]\n\n" if body else b""


def _failed_answer(answer: dict[str, Any], failure: Failure) -> dict[str, Any]:
    delta = orjson.loads(failure.body).get("delta", {}) if failure.body else {}
    return {"id": answer["id"], "message": {"role": "assistant", "content": []},
            "finish_reason": delta.get("finish_reason", "ERROR"),
            "usage": delta.get("usage", answer["usage"])}


def main(argv: list[str] | None = None) -> None:
    """Runs the fake as a process (for the benchmark and for manual use)."""
    run_standalone(FakeCohere, argv, description=__doc__.splitlines()[0], key_help="require this bearer key")


if __name__ == "__main__":
    main()
