"""A fake Gemini API (Generative Language API, v1beta) over real HTTP, speaking its wire format
(see google_payloads.py), with the scripting interface of FakeOpenAI.

    async with FakeGoogle(api_key="AIza-test") as fake:   # 127.0.0.1, ephemeral port
        fake.base_url                                     # "http://127.0.0.1:PORT" (the bare host)
        fake.fail_next(google_failures.rate_limited(2))   # scripted failures, in order
        fake.hold_streams(); ...; fake.release_streams()  # a stream waits after its first event
        fake.requests[-1].json, fake.disconnects          # what it saw

Routes: POST /v1beta/{models|tunedModels}/{model}:{method} for generateContent,
streamGenerateContent (`?alt=sse`: `data:` events, no [DONE], the stream just ends; without it a
JSON array, as Gemini does), embedContent and batchEmbedContents. The key is read from
`x-goog-api-key` (or `?key=`): none gives Gemini's 403, a wrong one its 400 API_KEY_INVALID.
Request bodies are validated with `google.genai.types` (unknown or mistyped fields answer 400
INVALID_ARGUMENT, as the real API does). Standalone: `python -m tests.fakes.google_upstream --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic
from aiohttp import web
from google.genai import types

from tests.fakes import google_payloads as payloads
from tests.fakes.openai_upstream import Failure

# The request fields the fake knows, and the SDK type each must validate as.
REQUEST_FIELDS: dict[str, Any] = {
    "contents": pydantic.TypeAdapter(list[types.Content]),
    "systemInstruction": pydantic.TypeAdapter(types.Content),
    "generationConfig": pydantic.TypeAdapter(types.GenerationConfig),
    "tools": pydantic.TypeAdapter(list[types.Tool]),
    "toolConfig": pydantic.TypeAdapter(types.ToolConfig),
    "safetySettings": pydantic.TypeAdapter(list[types.SafetySetting]),
}
EMBED_FIELDS = {"model", "content", "taskType", "title", "outputDimensionality"}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str  # e.g. "/v1beta/models/gemini-2.0-flash:generateContent"
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    json: Any


class InvalidArgument(Exception):
    """A request body Gemini would refuse with 400 INVALID_ARGUMENT."""


def _json(status: int, obj: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


def _invalid(message: str) -> web.Response:
    return _json(400, payloads.error(400, "INVALID_ARGUMENT", message))


def validate_generate(body: Any) -> None:
    """Raises InvalidArgument for a body the real generateContent would refuse."""
    if not isinstance(body, dict):
        raise InvalidArgument("Invalid JSON payload received. Expected an object.")
    for name, value in body.items():
        adapter = REQUEST_FIELDS.get(name)
        if adapter is None:
            raise InvalidArgument(f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.')
        try:
            adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            raise InvalidArgument(f"Invalid value at '{name}': {exc.errors()[0]['msg']}") from exc
    contents = body.get("contents") or []
    if not contents:
        raise InvalidArgument("* GenerateContentRequest.contents: contents is not specified\n")
    for i, content in enumerate(contents):
        if content.get("role") not in ("user", "model") or not content.get("parts"):
            raise InvalidArgument(f"* GenerateContentRequest.contents[{i}]: a role (user or model) and parts "
                                  "are required\n")


def validate_embed(request: Any, resource: str) -> None:
    """Raises InvalidArgument for an embedContent request (or one of a batch) Gemini would refuse."""
    if not isinstance(request, dict) or set(request) - EMBED_FIELDS or "content" not in request:
        raise InvalidArgument("Invalid JSON payload received in an embedding request.")
    if request.get("model", resource) != resource:
        raise InvalidArgument(f"* BatchEmbedContentsRequest.model: the model of every request must be "
                              f"{resource}\n")
    try:
        types.Content.model_validate(request["content"])
    except pydantic.ValidationError as exc:
        raise InvalidArgument(f"Invalid value at 'content': {exc.errors()[0]['msg']}") from exc


class FakeGoogle:
    """The fake server. Not thread-safe: use it from the event loop that started it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 known_models: set[str] | None = None, model_aliases: dict[str, str] | None = None,
                 record: bool = True, chunk_delay_s: float = 0.0, embedding_usage: bool = False) -> None:
        self.host, self._port = host, port
        self.api_key = api_key  # when set, requests need "x-goog-api-key: <api_key>"
        self.known_models = known_models  # when set, other models answer 404
        self.model_aliases = model_aliases or {}  # requested -> reported `modelVersion`
        self.record = record
        self.chunk_delay_s = chunk_delay_s
        self.embedding_usage = embedding_usage  # add `usageMetadata` to embedding answers
        self.first_byte_delay_s = 0.0
        self.requests: deque[RecordedRequest] = deque(maxlen=10_000)
        self.disconnects = 0
        self._disconnected = asyncio.Event()
        self._failures: deque[Failure] = deque()
        self._released = asyncio.Event()
        self._released.set()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> FakeGoogle:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1beta/{collection:models|tunedModels}/{call}", self._call)
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

    async def __aenter__(self) -> FakeGoogle:
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
        """From now on a stream stops after its first event until `release_streams()`."""
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
    def _key_failure(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _json(403, payloads.unregistered_caller())
        return None if key == self.api_key else _json(400, payloads.api_key_invalid())

    async def _admit(self, request: web.Request, resource: str,
                     method: str) -> tuple[Any, web.Response | Failure | None]:
        """Parses and records a request; returns its JSON and the early answer, if any."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None, _invalid("Invalid JSON payload received.")
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path, dict(request.query),
                                                 {k.lower(): v for k, v in request.headers.items()}, body))
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        if self._failures:
            failure = self._failures.popleft()
            if failure.after_chunks is None or method != "streamGenerateContent":
                return body, web.Response(status=failure.status, body=failure.body, headers=failure.headers,
                                          content_type=failure.content_type)
            return body, failure
        early = self._key_failure(request)
        if early is None and self.known_models is not None and resource not in self.known_models:
            early = _json(404, payloads.model_not_found(resource, method))
        return body, early

    async def _call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].rpartition(":")
        resource = f"{request.match_info['collection']}/{model}"
        handlers = {"generateContent": self._generate, "streamGenerateContent": self._generate,
                    "embedContent": self._embed, "batchEmbedContents": self._embed}
        if method not in handlers:
            return _json(404, payloads.error(404, "NOT_FOUND", f"Method {method} is not found."))
        body, early = await self._admit(request, resource, method)
        if isinstance(early, web.Response):
            return early
        try:
            return await handlers[method](request, body, resource, method, early)
        except InvalidArgument as exc:
            return _invalid(str(exc))

    async def _generate(self, request: web.Request, body: Any, resource: str, method: str,
                        failure: Failure | None) -> web.StreamResponse:
        validate_generate(body)
        model = resource.split("/", 1)[1]
        identity = {"model": self.model_aliases.get(model, model),
                    "response_id": f"fake{next(self._ids):08d}"}
        if method == "generateContent":
            return _json(200, payloads.generate(body, **identity))
        events = payloads.stream_events(body, **identity)
        if request.query.get("alt") != "sse":  # without alt=sse Gemini streams one JSON array
            return _json(200, events)
        return await self._stream(request, events, failure)

    async def _stream(self, request: web.Request, events: list[dict[str, Any]],
                      failure: Failure | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            for i, event in enumerate(events):
                if failure is not None and i == failure.after_chunks:
                    await response.write(b"data: " + failure.body + b"\r\n\r\n")
                    return response
                await response.write(b"data: " + orjson.dumps(event) + b"\r\n\r\n")
                if i == 0 and not self._released.is_set():
                    await self._released.wait()
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            self._disconnected.set()
            raise
        return response

    async def _embed(self, request: web.Request, body: Any, resource: str, method: str,
                     failure: Failure | None) -> web.StreamResponse:
        batch = method == "batchEmbedContents"
        if batch and (not isinstance(body, dict) or set(body) != {"requests"} or not body["requests"]):
            raise InvalidArgument("* BatchEmbedContentsRequest.requests: requests is required\n")
        items = body["requests"] if batch else [body]
        for item in items:
            validate_embed(item, resource)
        answer: dict[str, Any] = ({"embeddings": [payloads.embedding(i) for i in items]} if batch
                                  else {"embedding": payloads.embedding(body)})
        if self.embedding_usage:
            answer["usageMetadata"] = {"promptTokenCount": sum(payloads.embedding_tokens(i) for i in items)}
        return _json(200, answer)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeGoogle(host=args.host, port=args.port, api_key=args.api_key, record=False,
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
    parser.add_argument("--api-key", default=None, help="require this x-goog-api-key")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
