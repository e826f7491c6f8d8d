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
GET /v1/models (`models_failure` while set). Scripted failures apply to every POST route.
Standalone: `python -m tests.fakes.openai_upstream --port N` prints the port once
listening and serves until SIGINT/SIGTERM. The serving path does no validation and, with
`record=False`, no bookkeeping: the benchmark drives thousands of requests through it.
The lifecycle, scripting and records are `FakeUpstream`'s (base.py).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from tests.fakes import openai_payloads as payloads
from tests.fakes.base import (
    Failure,
    FakeUpstream,
    RecordedFile,
    RecordedRequest,
    json_response,
    run_standalone,
)

__all__ = ["FakeOpenAI", "Failure", "RecordedFile", "RecordedRequest", "main"]


class FakeOpenAI(FakeUpstream):
    """The fake server. Not thread-safe: use it from the event loop that started it."""

    BASE_PATH = "/v1"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 models: list[str] | None = None, known_models: set[str] | None = None,
                 model_aliases: dict[str, str] | None = None, record: bool = True,
                 chunk_delay_s: float = 0.0) -> None:
        # api_key: when set, requests need "Authorization: Bearer <api_key>".
        super().__init__(host=host, port=port, api_key=api_key, known_models=known_models,
                         model_aliases=model_aliases, record=record, chunk_delay_s=chunk_delay_s)
        self.models = models or ["gpt-4o-mini", "text-embedding-3-small"]
        # True: answers 400 to a request with `stream_options`, as some OpenAI-compatible servers do.
        self.rejects_stream_options = False

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self._chat)
        router.add_post("/v1/completions", self._completions)
        router.add_post("/v1/embeddings", self._embeddings)
        router.add_post("/v1/images/generations", self._image_generations)
        router.add_post("/v1/images/edits", self._image_uploads)
        router.add_post("/v1/images/variations", self._image_uploads)
        router.add_get("/v1/models", self._models)

    # -- handlers ----------------------------------------------------------------------------
    async def _admit(self, request: web.Request) -> tuple[Any, web.Response | Failure | None]:
        """Parses and records a request; returns its JSON and the early answer, if any."""
        body = orjson.loads(await request.read())
        self._record(request, body)
        return body, await self._gate(request, body)

    async def _admit_form(self, request: web.Request) -> tuple[dict[str, str], list[RecordedFile],
                                                                web.Response | Failure | None]:
        """Parses and records a multipart request: its text fields, files and early answer, if any."""
        if request.content_type != "multipart/form-data":
            message = f"Invalid Content-Type header ({request.content_type}), expected multipart/form-data."
            return {}, [], json_response(400, payloads.error(message, "invalid_request_error"))
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
        self._record(request, fields, files)
        return fields, files, await self._gate(request, fields)

    async def _gate(self, request: web.Request, body: Any) -> web.Response | Failure | None:
        """Delays, scripted failures, the key and model checks: the early answer, if any."""
        failure = await self._scripted_failure()
        if failure is not None:
            return failure.response() if failure.after_chunks is None else failure
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return json_response(401, _unauthorized(request.headers.get("Authorization")))
        if self.rejects_stream_options and "stream_options" in body:
            return json_response(400, payloads.error("Unrecognized request argument supplied: stream_options",
                                                     "invalid_request_error"))
        if self.known_models is not None and body.get("model") not in self.known_models:
            message = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            return json_response(404, payloads.error(message, "invalid_request_error",
                                                     code="model_not_found"))
        return None

    def _identity(self, body: dict[str, Any], prefix: str = "chatcmpl") -> dict[str, Any]:
        return {"completion_id": f"{prefix}-fake{next(self._ids):08d}", "created": int(time.time()),
                "model": self._reported_model(str(body.get("model", "")))}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        if isinstance(early, Failure) and not body.get("stream"):
            return _unary(early)
        if not body.get("stream"):
            return json_response(200, payloads.completion(body, **self._identity(body)))
        return await self._sse(request, payloads.chunks(body, **self._identity(body)), early)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        if isinstance(early, Failure) and not body.get("stream"):
            return _unary(early)
        identity = self._identity(body, prefix="cmpl")
        if not body.get("stream"):
            return json_response(200, payloads.text_completion(body, **identity))
        return await self._sse(request, payloads.text_completion_chunks(body, **identity), early)

    async def _sse(self, request: web.Request, chunks: list[dict[str, Any]],
                   failure: Failure | None) -> web.StreamResponse:
        """`data:` events ending with `data: [DONE]`; an in-stream failure is one `data:` event."""
        # Encoded lazily, each as it is written: a stamp is the time of its own write.
        frames = (_data(orjson.dumps(stamped(chunk) if self.stamp_frames else chunk)) for chunk in chunks)
        return await self._stream(
            request, frames, failure,
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
            failure_frame=_data, end=b"data: [DONE]\n\n")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if isinstance(early, web.Response):
            return early
        model = self._identity(body)["model"]
        return json_response(200, payloads.embeddings(body, model=model))

    async def _image_generations(self, request: web.Request) -> web.Response:
        body, early = await self._admit(request)
        if early is not None:
            return _unary(early)
        return json_response(200, payloads.images(body, created=int(time.time())))

    async def _image_uploads(self, request: web.Request) -> web.Response:
        fields, files, early = await self._admit_form(request)
        if early is not None:
            return _unary(early)
        images = [f for f in files if f.field in ("image", "image[]")]
        required = ("prompt", "image") if request.path.endswith("/edits") else ("image",)
        for name in required:
            if not (images if name == "image" else fields.get(name)):
                return json_response(400, payloads.error(f"Missing required parameter: '{name}'.",
                                                         "invalid_request_error", param=name,
                                                         code="missing_required_parameter"))
        return json_response(200, payloads.images(fields, created=int(time.time()), input_images=len(images)))

    async def _models(self, request: web.Request) -> web.Response:
        early = await self._models_gate(request)
        if early is not None:
            return early
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return json_response(401, _unauthorized(request.headers.get("Authorization")))
        return json_response(200, payloads.models_list(self.models, created=1_700_000_000))


STAMP_PREFIX = "fp_t"


def stamped(chunk: dict[str, Any]) -> dict[str, Any]:
    """The chunk with the time it leaves (ns since the epoch) as its `system_fingerprint`, a field
    the gateway passes through untouched: the benchmark's load generator times each chunk's
    transit with it (bench/loadgen.py)."""
    return {**chunk, "system_fingerprint": f"{STAMP_PREFIX}{time.time_ns()}"}


def _data(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _unary(early: web.Response | Failure) -> web.Response:
    """The answer of a scripted failure on a non-streaming route (an in-stream one has no stream)."""
    if isinstance(early, web.Response):
        return early
    return web.Response(status=early.status, body=early.body, content_type=early.content_type)


def _unauthorized(header: str | None) -> Any:
    if not header:
        return payloads.error("You didn't provide an API key.", "invalid_request_error")
    key = header.removeprefix("Bearer ")
    # OpenAI echoes part of the wrong key: the gateway must never pass this message on.
    shown = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
    return payloads.error(f"Incorrect API key provided: {shown}.", "invalid_request_error",
                          code="invalid_api_key")


def main(argv: list[str] | None = None) -> None:
    """Runs the fake as a process (for the benchmark and for manual use)."""
    run_standalone(FakeOpenAI, argv, description=__doc__.splitlines()[0], key_help="require this bearer key")


if __name__ == "__main__":
    main()
