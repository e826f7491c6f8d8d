"""What every fake upstream shares: the server's lifecycle, the scripting interface and the records.

`FakeUpstream` runs an aiohttp app on 127.0.0.1 (an ephemeral port by default) and holds the state
the tests script: failures to answer next, a delay before the first byte and between stream
chunks, held streams, the requests seen and the streams clients left early. A subclass adds its
vendor's routes (`_add_routes`), credentials and body checks, and wire format; it uses
`_record()`, `_scripted_failure()` and `_stream()` so that scripting behaves the same everywhere.
`run_standalone()` is the `main()` of each fake's module (`python -m tests.fakes.<kind>_upstream`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web


@dataclass(frozen=True, slots=True)
class Failure:
    """A scripted error answer; `after_chunks` set means: stream that many chunks first, then send
    `body` as an in-stream `data:` event (the status is then 200, as in a real stream)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    after_chunks: int | None = None
    drop: bool = False  # with after_chunks: the connection is cut there, without any error event

    def response(self) -> web.Response:
        """This failure as a whole answer: its status, body, headers and content type."""
        return web.Response(status=self.status, body=self.body, headers=self.headers,
                            content_type=self.content_type)


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
    path: str  # e.g. "/v1/chat/completions", "/v1beta/models/gemini-2.0-flash:generateContent"
    headers: dict[str, str]  # lower-case names
    json: Any  # the JSON body; for multipart, the text fields
    files: tuple[RecordedFile, ...] = ()
    query: dict[str, str] = field(default_factory=dict)


def json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """`obj` as a JSON answer."""
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json",
                        headers=headers)


class FakeUpstream:
    """The shared part of a fake server. Not thread-safe: use it from the event loop that started it."""

    # What `base_url` adds to the host: the path prefix the vendor's SDKs expect in a base URL.
    BASE_PATH = ""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 known_models: set[str] | None = None, model_aliases: dict[str, str] | None = None,
                 record: bool = True, chunk_delay_s: float = 0.0) -> None:
        self.host, self._port = host, port
        self.api_key = api_key  # when set, requests need it where the vendor reads it
        self.known_models = known_models  # when set, other models answer the vendor's 404
        self.model_aliases = model_aliases or {}  # requested -> reported, like dated snapshots
        self.record = record  # False: no bookkeeping at all (the benchmark's serving path)
        self.chunk_delay_s = chunk_delay_s
        self.first_byte_delay_s = 0.0  # before any response header, for timeout tests
        self.first_frame_delay_s = 0.0  # after a stream's headers, before its first frame (a model's TTFT)
        # Each streamed frame carries the wall-clock time it was written (subclasses that support
        # it: the OpenAI fake's `system_fingerprint`), so a client can time a chunk's transit.
        self.stamp_frames = False
        # While set, the vendor's model list (what health probes read) answers this failure.
        self.models_failure: Failure | None = None
        self.requests: deque[RecordedRequest] = deque(maxlen=10_000)
        self.disconnects = 0  # streams the client left before their end
        self._disconnected = asyncio.Event()
        self._failures: deque[Failure] = deque()
        self._released = asyncio.Event()
        self._released.set()
        self._hold_after: int | None = None  # hold_streams(after=...): overrides the fake's hold point
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """Adds the vendor's routes; each subclass has its own."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._add_routes(app.router)
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

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}{self.BASE_PATH}"

    # -- scripting ---------------------------------------------------------------------------
    def fail_next(self, failure: Failure, times: int = 1) -> None:
        """The next `times` requests of the scripted routes answer `failure` (after earlier scripted
        ones); each fake's docstring says which routes those are."""
        self._failures.extend([failure] * times)

    def hold_streams(self, after: int | None = None) -> None:
        """From now on a stream waits at its hold point until `release_streams()`; each fake's
        docstring says where that is (after the first chunk, or the first block's opening).
        `after` moves it to after frame `after` (OpenAI: 1 is after the first content, as the
        gateway holds a role-only chunk until content arrives, docs/resilience.md §2)."""
        self._hold_after = after
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
        self._hold_after = None
        self.chunk_delay_s = self.first_byte_delay_s = self.first_frame_delay_s = 0.0
        self.stamp_frames = False
        self.models_failure = None
        self.requests.clear()
        self.disconnects = 0
        self._disconnected.clear()

    # -- for the subclasses' handlers ----------------------------------------------------------
    def _record(self, request: web.Request, body: Any, files: Iterable[RecordedFile] = ()) -> None:
        """Keeps the request in `requests` (unless `record` is off)."""
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path,
                                                 {k.lower(): v for k, v in request.headers.items()}, body,
                                                 tuple(files), dict(request.query)))

    async def _models_gate(self, request: web.Request) -> web.Response | None:
        """Records a model-list request, waits `first_byte_delay_s`, and answers `models_failure`
        while it is set."""
        self._record(request, None)
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        return self.models_failure.response() if self.models_failure is not None else None

    async def _scripted_failure(self) -> Failure | None:
        """Waits `first_byte_delay_s`, then takes the next scripted failure, if any."""
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        return self._failures.popleft() if self._failures else None

    def _reported_model(self, model: str) -> str:
        """The model name the answer reports for the requested one."""
        return self.model_aliases.get(model, model)

    async def _stream(self, request: web.Request, frames: Iterable[bytes], failure: Failure | None, *,
                      headers: Mapping[str, str], failure_frame: Callable[[bytes], bytes],
                      hold_after: int | None = 0, end: bytes = b"") -> web.StreamResponse:
        """Streams the encoded `frames`, then `end`. Scripting applies: after frame `hold_after` the
        stream waits while streams are held, `chunk_delay_s` spaces frames, and an in-stream
        `failure` ends the stream before frame `after_chunks` with `failure_frame(body)` (no `end`).
        A client that leaves before the end is counted in `disconnects`."""
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        if self.first_frame_delay_s:
            await asyncio.sleep(self.first_frame_delay_s)
        if self._hold_after is not None:
            hold_after = self._hold_after
        try:
            for i, frame in enumerate(frames):
                if failure is not None and i == failure.after_chunks:
                    if failure.drop:  # the provider dies: no error event, no end
                        assert request.transport is not None
                        request.transport.abort()
                        return response
                    if tail := failure_frame(failure.body):
                        await response.write(tail)
                    return response
                await response.write(frame)
                if i == hold_after and not self._released.is_set():
                    await self._released.wait()
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            if end:
                await response.write(end)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            self._disconnected.set()
            raise
        return response


async def _serve(make: Callable[..., FakeUpstream], args: argparse.Namespace) -> None:
    fake = make(host=args.host, port=args.port, api_key=args.api_key, record=False,
                chunk_delay_s=args.chunk_delay_ms / 1000.0)
    fake.first_frame_delay_s = args.first_frame_delay_ms / 1000.0
    fake.stamp_frames = args.stamp_frames
    await fake.start()
    print(fake.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def run_standalone(make: Callable[..., FakeUpstream], argv: list[str] | None, *, description: str,
                   key_help: str) -> None:
    """Runs a fake as a process until SIGINT/SIGTERM, printing its port once it listens (the
    benchmark and manual use). Options: --host, --port (0 picks a free one), --api-key,
    --chunk-delay-ms, --first-frame-delay-ms, --stamp-frames; nothing is recorded."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed when ready)")
    parser.add_argument("--api-key", default=None, help=key_help)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause after each streamed frame")
    parser.add_argument("--first-frame-delay-ms", type=float, default=0.0,
                        help="pause between a stream's headers and its first frame")
    parser.add_argument("--stamp-frames", action="store_true",
                        help="stamp each streamed frame with the time it was written (where supported)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # the fake runs without it, only slower
        asyncio.run(_serve(make, args))
    else:
        uvloop.run(_serve(make, args))
