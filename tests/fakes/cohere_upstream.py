"""A fake Cohere API v2 server over real HTTP (see cohere_payloads.py for what it answers).

    async with FakeCohere(api_key="co-test") as fake:    # 127.0.0.1, ephemeral port
        fake.base_url                                     # "http://127.0.0.1:PORT" (the bare host)
        fake.fail_next(cohere_failures.rate_limited(2))   # scripted failures, in order
        fake.chunk_delay_s = 0.01                         # pause between stream events
        fake.hold_streams(); ...; fake.release_streams()  # a stream waits after its opening
        fake.requests[-1].json, fake.disconnects          # what it saw

Routes: POST /v2/chat (JSON, or with `"stream": true` SSE events `event: <type>` +
`data: {"type": <type>, ...}`, then `data: [DONE]`) and POST /v2/embed. Requests need
`Authorization: Bearer <api_key>` when `api_key` is set (401 `{"message": "invalid api token"}`
otherwise). A field Cohere does not define, or a missing required one, is a 400 `{"message"}`:
the adapter's mistakes show up here as they would against Cohere.
A held stream stops after its opening: `message-start` and the first block's first event.
Standalone: `python -m tests.fakes.cohere_upstream --port N` prints the port once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import cohere_payloads as payloads
from tests.fakes.openai_upstream import Failure, RecordedRequest

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


class FakeCohere:
    """The fake server. Not thread-safe: use it from the event loop that started it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 known_models: set[str] | None = None, record: bool = True,
                 chunk_delay_s: float = 0.0) -> None:
        self.host, self._port = host, port
        self.api_key = api_key
        self.known_models = known_models  # when set, other models answer 404
        self.record = record
        self.chunk_delay_s = chunk_delay_s
        self.first_byte_delay_s = 0.0  # before any response header, for timeout tests
        self.requests: deque[RecordedRequest] = deque(maxlen=10_000)
        self.disconnects = 0  # streams the client left before their end
        self._disconnected = asyncio.Event()
        self._failures: deque[Failure] = deque()
        self._released = asyncio.Event()
        self._released.set()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> FakeCohere:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v2/chat", self._chat)
        app.router.add_post("/v2/embed", self._embed)
        # handler_cancellation: a client that leaves cancels our handler, which is how we see it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeCohere:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}"

    # -- scripting ---------------------------------------------------------------------------
    def fail_next(self, failure: Failure, times: int = 1) -> None:
        """The next `times` chat/embed requests answer `failure` (after earlier scripted ones)."""
        self._failures.extend([failure] * times)

    def hold_streams(self) -> None:
        """From now on a stream stops after its opening until `release_streams()`."""
        self._released.clear()

    def release_streams(self) -> None:
        self._released.set()

    async def wait_for_disconnect(self, within_s: float = 5.0) -> None:
        """Returns once a client left a stream early; TimeoutError otherwise."""
        await asyncio.wait_for(self._disconnected.wait(), within_s)

    def reset(self) -> None:
        """Forgets scripts, delays, holds and records."""
        self._failures.clear()
        self._released.set()
        self.chunk_delay_s = self.first_byte_delay_s = 0.0
        self.requests.clear()
        self.disconnects = 0
        self._disconnected.clear()

    # -- handlers ----------------------------------------------------------------------------
    async def _admit(self, request: web.Request) -> tuple[Any, web.Response | Failure | None]:
        """Parses and records a request; returns its JSON and the early answer, if any."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None, _json(400, payloads.error("invalid request: the body is not valid JSON"))
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path,
                                                 {k.lower(): v for k, v in request.headers.items()}, body))
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        if self._failures:
            failure = self._failures.popleft()
            if failure.after_chunks is None:
                return body, web.Response(status=failure.status, body=failure.body, headers=failure.headers,
                                          content_type=failure.content_type)
            return body, failure
        return body, self._refusal(request, body)

    def _refusal(self, request: web.Request, body: Any) -> web.Response | None:
        header = request.headers.get("Authorization")
        if self.api_key is not None and header != f"Bearer {self.api_key}":
            return _json(401, payloads.error("no api key supplied" if not header else "invalid api token"))
        if not isinstance(body, dict):
            return _json(400, payloads.error("invalid request: the body must be a JSON object"))
        unknown = sorted(set(body) - KNOWN[request.path])
        missing = [name for name in REQUIRED[request.path] if name not in body]
        if unknown or missing:
            problem = f"unknown field: {unknown[0]}" if unknown else f"missing required field: {missing[0]}"
            return _json(400, payloads.error(f"invalid request: {problem}"))
        if self.known_models is not None and body["model"] not in self.known_models:
            message = (f"model '{body['model']}' not found, make sure the correct model ID was used and "
                       "that you have access to the model.")
            return _json(404, payloads.error(message))
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
            return _json(200, answer)
        return await self._stream(request, payloads.stream_events(body, response_id=response_id), early)

    async def _stream(self, request: web.Request, events: list[payloads.StreamEvent],
                      failure: Failure | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            for i, (name, data) in enumerate(events):
                if failure is not None and i == failure.after_chunks:
                    if failure.body:  # else the stream is cut: no message-end, no [DONE]
                        await response.write(_event(orjson.loads(failure.body)["type"], failure.body))
                        await response.write(b"data: [DONE]\n\n")
                    return response
                await response.write(_event(name, orjson.dumps(data)))
                if i == HOLD_AFTER_EVENTS - 1 and not self._released.is_set():
                    await self._released.wait()
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            self._disconnected.set()
            raise
        return response

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        return _json(200, payloads.embed_response(body, response_id=self._response_id()))


def _event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _failed_answer(answer: dict[str, Any], failure: Failure) -> dict[str, Any]:
    delta = orjson.loads(failure.body).get("delta", {}) if failure.body else {}
    return {"id": answer["id"], "message": {"role": "assistant", "content": []},
            "finish_reason": delta.get("finish_reason", "ERROR"),
            "usage": delta.get("usage", answer["usage"])}


def _json(status: int, obj: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeCohere(host=args.host, port=args.port, api_key=args.api_key, record=False,
                      chunk_delay_s=args.chunk_delay_ms / 1000.0)
    await fake.start()
    print(fake.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main(argv: list[str] | None = None) -> None:
    """Runs the fake as a process (for the benchmark and for manual use)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed when ready)")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
