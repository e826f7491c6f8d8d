"""A fake OpenAI server over real HTTP, speaking OpenAI's wire format (see openai_payloads.py).

    async with FakeOpenAI(api_key="sk-test") as fake:     # 127.0.0.1, ephemeral port
        fake.base_url                                     # "http://127.0.0.1:PORT/v1"
        fake.fail_next(failures.rate_limited(2))          # scripted failures, in order
        fake.chunk_delay_s = 0.01                         # pause between stream chunks
        fake.hold_streams(); ...; fake.release_streams()  # a stream waits after its first chunk
        fake.requests[-1].json, fake.disconnects          # what it saw
        fake.requests[-1].files                           # the files of a multipart upload

Routes: POST /v1/chat/completions and /v1/completions (JSON or SSE ending `data: [DONE]`),
POST /v1/embeddings, POST /v1/images/generations (JSON), /v1/images/edits and
/v1/images/variations (multipart/form-data: `json` records the text fields, `files` the files),
GET /v1/models. Scripted failures apply to every POST route.
Standalone: `python -m tests.fakes.openai_upstream --port N` prints the port once
listening and serves until SIGINT/SIGTERM. The serving path does no validation and, with
`record=False`, no bookkeeping: the benchmark drives thousands of requests through it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from tests.fakes import openai_payloads as payloads


@dataclass(frozen=True, slots=True)
class Failure:
    """A scripted error answer; `after_chunks` set means: stream that many chunks first, then send
    `body` as an in-stream `data:` event (the status is then 200, as in a real stream)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    after_chunks: int | None = None


@dataclass(frozen=True, slots=True)
class RecordedFile:
    """One file part of a multipart request."""

    field: str
    filename: str | None
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any  # the JSON body; for multipart, the text fields
    files: tuple[RecordedFile, ...] = ()


class FakeOpenAI:
    """The fake server. Not thread-safe: use it from the event loop that started it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 models: list[str] | None = None, known_models: set[str] | None = None,
                 model_aliases: dict[str, str] | None = None, record: bool = True,
                 chunk_delay_s: float = 0.0) -> None:
        self.host, self._port = host, port
        self.api_key = api_key  # when set, requests need "Authorization: Bearer <api_key>"
        self.models = models or ["gpt-4o-mini", "text-embedding-3-small"]
        self.known_models = known_models  # when set, other models answer 404
        self.model_aliases = model_aliases or {}  # requested -> reported, like OpenAI's dated snapshots
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
    async def start(self) -> FakeOpenAI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/images/generations", self._image_generations)
        app.router.add_post("/v1/images/edits", self._image_uploads)
        app.router.add_post("/v1/images/variations", self._image_uploads)
        app.router.add_get("/v1/models", self._models)
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

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}/v1"

    # -- scripting ---------------------------------------------------------------------------
    def fail_next(self, failure: Failure, times: int = 1) -> None:
        """The next `times` POST requests answer `failure` (after earlier scripted ones)."""
        self._failures.extend([failure] * times)

    def hold_streams(self) -> None:
        """From now on a stream stops after its first chunk until `release_streams()`."""
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
        body = orjson.loads(await request.read())
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path,
                                                 {k.lower(): v for k, v in request.headers.items()}, body))
        return body, await self._gate(request, body)

    async def _admit_form(self, request: web.Request) -> tuple[dict[str, str], list[RecordedFile],
                                                                web.Response | Failure | None]:
        """Parses and records a multipart request: its text fields, files and early answer, if any."""
        if request.content_type != "multipart/form-data":
            message = f"Invalid Content-Type header ({request.content_type}), expected multipart/form-data."
            return {}, [], _json(400, payloads.error(message, "invalid_request_error"))
        fields: dict[str, str] = {}
        files: list[RecordedFile] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)  # no nested multipart in OpenAI's API
            if part.filename is None:
                fields[part.name or ""] = await part.text()
            else:
                files.append(RecordedFile(part.name or "", part.filename,
                                          part.headers.get("Content-Type", ""), bytes(await part.read())))
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path,
                                                 {k.lower(): v for k, v in request.headers.items()}, fields,
                                                 tuple(files)))
        return fields, files, await self._gate(request, fields)

    async def _gate(self, request: web.Request, body: Any) -> web.Response | Failure | None:
        """Delays, scripted failures, the key and model checks: the early answer, if any."""
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        if self._failures:
            failure = self._failures.popleft()
            if failure.after_chunks is None:
                return web.Response(status=failure.status, body=failure.body, headers=failure.headers,
                                    content_type=failure.content_type)
            return failure
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _json(401, _unauthorized(request.headers.get("Authorization")))
        if self.known_models is not None and body.get("model") not in self.known_models:
            message = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            return _json(404, payloads.error(message, "invalid_request_error", code="model_not_found"))
        return None

    def _identity(self, body: dict[str, Any], prefix: str = "chatcmpl") -> dict[str, Any]:
        model = str(body.get("model", ""))
        return {"completion_id": f"{prefix}-fake{next(self._ids):08d}", "created": int(time.time()),
                "model": self.model_aliases.get(model, model)}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        if isinstance(early, Failure) and not body.get("stream"):
            return web.Response(status=early.status, body=early.body, content_type=early.content_type)
        if not body.get("stream"):
            return _json(200, payloads.completion(body, **self._identity(body)))
        return await self._stream(request, payloads.chunks(body, **self._identity(body)), early)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        if isinstance(early, Failure) and not body.get("stream"):
            return web.Response(status=early.status, body=early.body, content_type=early.content_type)
        identity = self._identity(body, prefix="cmpl")
        if not body.get("stream"):
            return _json(200, payloads.text_completion(body, **identity))
        return await self._stream(request, payloads.text_completion_chunks(body, **identity), early)

    async def _stream(self, request: web.Request, chunks: list[dict[str, Any]],
                      failure: Failure | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            for i, chunk in enumerate(chunks):
                if failure is not None and i == failure.after_chunks:
                    await response.write(b"data: " + failure.body + b"\n\n")
                    return response
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if i == 0 and not self._released.is_set():
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

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        model = self._identity(body)["model"]
        return _json(200, payloads.embeddings(body, model=model))

    async def _image_generations(self, request: web.Request) -> web.Response:
        body, early = await self._admit(request)
        if early is not None:
            return _unary(early)
        return _json(200, payloads.images(body, created=int(time.time())))

    async def _image_uploads(self, request: web.Request) -> web.Response:
        fields, files, early = await self._admit_form(request)
        if early is not None:
            return _unary(early)
        images = [f for f in files if f.field in ("image", "image[]")]
        required = ("prompt", "image") if request.path.endswith("/edits") else ("image",)
        for name in required:
            if not (images if name == "image" else fields.get(name)):
                return _json(400, payloads.error(f"Missing required parameter: '{name}'.",
                                                 "invalid_request_error", param=name,
                                                 code="missing_required_parameter"))
        return _json(200, payloads.images(fields, created=int(time.time()), input_images=len(images)))

    async def _models(self, request: web.Request) -> web.Response:
        return _json(200, payloads.models_list(self.models, created=1_700_000_000))


def _unary(early: web.Response | Failure) -> web.Response:
    """The answer of a scripted failure on a non-streaming route (an in-stream one has no stream)."""
    if isinstance(early, web.Response):
        return early
    return web.Response(status=early.status, body=early.body, content_type=early.content_type)


def _json(status: int, obj: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


def _unauthorized(header: str | None) -> Any:
    if not header:
        return payloads.error("You didn't provide an API key.", "invalid_request_error")
    key = header.removeprefix("Bearer ")
    # OpenAI echoes part of the wrong key: the gateway must never pass this message on.
    shown = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
    return payloads.error(f"Incorrect API key provided: {shown}.", "invalid_request_error",
                          code="invalid_api_key")


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeOpenAI(host=args.host, port=args.port, api_key=args.api_key, record=False,
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
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # the fake runs without it, only slower
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
