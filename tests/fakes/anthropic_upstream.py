"""A fake Anthropic server over real HTTP, speaking the Messages API's wire format (see
anthropic_payloads.py), with FakeOpenAI's scripting interface:

    async with FakeAnthropic(api_key="sk-ant-test") as fake:  # 127.0.0.1, ephemeral port
        fake.base_url                                         # "http://127.0.0.1:PORT" (the bare host)
        fake.fail_next(anthropic_failures.overloaded())       # scripted failures, in order
        fake.chunk_delay_s = 0.01                             # pause between stream events
        fake.hold_streams(); ...; fake.release_streams()      # a stream waits once its first block started
        fake.requests[-1].json, fake.disconnects              # what it saw

Route: POST /v1/messages (JSON, or SSE `event:`/`data:` pairs ending with `message_stop`). Every
request needs `anthropic-version: 2023-06-01` (else 400, as Anthropic answers) and, when
`api_key` is set, `x-api-key: <api_key>` (else 401 authentication_error). The key is read from
`x-api-key` only: that is what the gateway sends (the 2.x SDK sends `Authorization: Bearer`,
which the fake does not take, so a regression in the adapter's header shows). Bodies are validated
as Anthropic does for the mistakes an adapter could make (unknown fields, no `max_tokens`, empty
text blocks, orphan `tool_result`s, temperature above 1): 400 invalid_request_error.
Standalone: `python -m tests.fakes.anthropic_upstream --port N` prints the port once listening.
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

from tests.fakes import anthropic_payloads as payloads
from tests.fakes.openai_upstream import Failure, RecordedRequest

__all__ = ["API_VERSION", "FakeAnthropic", "Failure", "RecordedRequest"]

API_VERSION = "2023-06-01"
# Stream events that hand the client a chunk: what `Failure.after_chunks` counts.
CHUNK_EVENTS = frozenset({"content_block_start", "content_block_delta"})


class FakeAnthropic:
    """The fake server. Not thread-safe: use it from the event loop that started it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 known_models: set[str] | None = None, model_aliases: dict[str, str] | None = None,
                 record: bool = True, chunk_delay_s: float = 0.0) -> None:
        self.host, self._port = host, port
        self.api_key = api_key  # when set, requests need "x-api-key: <api_key>"
        self.known_models = known_models  # when set, other models answer 404 not_found_error
        self.model_aliases = model_aliases or {}  # requested -> reported (dated snapshots)
        self.record = record
        self.chunk_delay_s = chunk_delay_s
        self.first_byte_delay_s = 0.0  # before any response header, for timeout tests
        self.cached_prompt_tokens = 0  # prompt tokens reported as cache reads
        self.requests: deque[RecordedRequest] = deque(maxlen=10_000)
        self.disconnects = 0  # streams the client left before their end
        self._disconnected = asyncio.Event()
        self._failures: deque[Failure] = deque()
        self._released = asyncio.Event()
        self._released.set()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> FakeAnthropic:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
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

    async def __aenter__(self) -> FakeAnthropic:
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
        """The next `times` requests answer `failure` (after earlier scripted ones)."""
        self._failures.extend([failure] * times)

    def hold_streams(self) -> None:
        """From now on a stream stops once its first content block started, until released."""
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
        self.cached_prompt_tokens = 0
        self.requests.clear()
        self.disconnects = 0
        self._disconnected.clear()

    # -- handlers ----------------------------------------------------------------------------
    def _refusal(self, request: web.Request, body: Any) -> web.Response | None:
        """Anthropic's own checks, in its order: credentials, version, body, model."""
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _json(401, payloads.error("authentication_error", "invalid x-api-key"))
        version = request.headers.get("anthropic-version")
        if version != API_VERSION:
            message = ("anthropic-version: header is required" if version is None
                       else f"anthropic-version: invalid version '{version}'")
            return _json(400, payloads.error("invalid_request_error", message))
        found = payloads.problem(body)
        if found is not None:
            return _json(400, payloads.error("invalid_request_error", found))
        if self.known_models is not None and body.get("model") not in self.known_models:
            return _json(404, payloads.error("not_found_error", f"model: {body.get('model')}"))
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path,
                                                 {k.lower(): v for k, v in request.headers.items()}, body))
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        failure = self._failures.popleft() if self._failures else None
        if failure is not None and (failure.after_chunks is None or not body.get("stream")):
            return web.Response(status=failure.status, body=failure.body, headers=failure.headers,
                                content_type=failure.content_type)
        refusal = self._refusal(request, body)
        if refusal is not None:
            return refusal
        model = str(body.get("model", ""))
        message_id, reported = f"msg_fake{next(self._ids):016d}", self.model_aliases.get(model, model)
        cached = self.cached_prompt_tokens
        if not body.get("stream"):
            return _json(200, payloads.message(body, message_id=message_id, model=reported, cached=cached))
        events = payloads.events(body, message_id=message_id, model=reported, cached=cached)
        return await self._stream(request, events, failure)

    async def _stream(self, request: web.Request, events: list[dict[str, Any]],
                      failure: Failure | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache", "request-id": "req_fake0001"})
        await response.prepare(request)
        chunks, held = 0, False
        try:
            for event in events:
                if failure is not None and failure.after_chunks == chunks:
                    await response.write(b"event: error\ndata: " + failure.body + b"\n\n")
                    return response
                await response.write(_sse(event))
                chunks += event["type"] in CHUNK_EVENTS
                if event["type"] == "content_block_start" and not held and not self._released.is_set():
                    held = True
                    await self._released.wait()
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            self._disconnected.set()
            raise
        return response


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _json(status: int, obj: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json",
                        headers={"request-id": "req_fake0001"})


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeAnthropic(host=args.host, port=args.port, api_key=args.api_key, record=False,
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
    parser.add_argument("--api-key", default=None, help="require this x-api-key")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
