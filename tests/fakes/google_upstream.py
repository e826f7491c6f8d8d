"""A fake Gemini API (Generative Language API, v1beta) over real HTTP, speaking its wire format
(see google_payloads.py), with the scripting interface of FakeOpenAI.

    async with FakeGoogle(api_key="AIza-test") as fake:   # 127.0.0.1, ephemeral port
        fake.base_url                                     # "http://127.0.0.1:PORT" (the bare host)
        fake.fail_next(google_failures.rate_limited(2))   # scripted failures, in order
        fake.hold_streams(); ...; fake.release_streams()  # a stream waits after its first event
        fake.requests[-1].json, fake.disconnects          # what it saw

Routes: POST /v1beta/{models|tunedModels}/{model}:{method} for generateContent,
streamGenerateContent (`?alt=sse`: `data:` events, no [DONE], the stream just ends; without it a
JSON array, as Gemini does), embedContent and batchEmbedContents; GET /v1beta/models (the model
list, `models_failure` while set). The key is read from
`x-goog-api-key` (or `?key=`): none gives Gemini's 403, a wrong one its 400 API_KEY_INVALID.
Request bodies are validated with `google.genai.types` (unknown or mistyped fields answer 400
INVALID_ARGUMENT, as the real API does). Standalone: `python -m tests.fakes.google_upstream --port N`.
The lifecycle, scripting and records are `FakeUpstream`'s (base.py); `requests[i].query` holds
the query string (`alt`, `key`).
"""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
from aiohttp import web
from google.genai import types

from tests.fakes import google_payloads as payloads
from tests.fakes.base import Failure, FakeUpstream, RecordedRequest, json_response, run_standalone

__all__ = ["EMBED_FIELDS", "REQUEST_FIELDS", "FakeGoogle", "Failure", "InvalidArgument", "RecordedRequest",
           "main", "validate_embed", "validate_generate"]

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


class InvalidArgument(Exception):
    """A request body Gemini would refuse with 400 INVALID_ARGUMENT."""


def _invalid(message: str) -> web.Response:
    return json_response(400, payloads.error(400, "INVALID_ARGUMENT", message))


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


class FakeGoogle(FakeUpstream):
    """The fake server (api_key: when set, requests need "x-goog-api-key: <api_key>"). Not
    thread-safe: use it from the event loop that started it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 known_models: set[str] | None = None, model_aliases: dict[str, str] | None = None,
                 record: bool = True, chunk_delay_s: float = 0.0, embedding_usage: bool = False) -> None:
        super().__init__(host=host, port=port, api_key=api_key, known_models=known_models,
                         model_aliases=model_aliases, record=record, chunk_delay_s=chunk_delay_s)
        self.embedding_usage = embedding_usage  # add `usageMetadata` to embedding answers

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1beta/{collection:models|tunedModels}/{call}", self._call)
        router.add_get("/v1beta/models", self._models)

    # -- handlers ----------------------------------------------------------------------------
    def _key_failure(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return json_response(403, payloads.unregistered_caller())
        return None if key == self.api_key else json_response(400, payloads.api_key_invalid())

    async def _models(self, request: web.Request) -> web.Response:
        """`GET /v1beta/models`: the key check, then one page of Gemini's model list."""
        early = await self._models_gate(request) or self._key_failure(request)
        return early if early is not None else json_response(200, payloads.models_list(["gemini-2.0-flash"]))

    async def _admit(self, request: web.Request, resource: str,
                     method: str) -> tuple[Any, web.Response | Failure | None]:
        """Parses and records a request; returns its JSON and the early answer, if any."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None, _invalid("Invalid JSON payload received.")
        self._record(request, body)
        failure = await self._scripted_failure()
        if failure is not None:
            if failure.after_chunks is None or method != "streamGenerateContent":
                return body, failure.response()
            return body, failure
        early = self._key_failure(request)
        if early is None and self.known_models is not None and resource not in self.known_models:
            early = json_response(404, payloads.model_not_found(resource, method))
        return body, early

    async def _call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].rpartition(":")
        resource = f"{request.match_info['collection']}/{model}"
        handlers = {"generateContent": self._generate, "streamGenerateContent": self._generate,
                    "embedContent": self._embed, "batchEmbedContents": self._embed}
        if method not in handlers:
            return json_response(404, payloads.error(404, "NOT_FOUND", f"Method {method} is not found."))
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
        identity = {"model": self._reported_model(resource.split("/", 1)[1]),
                    "response_id": f"fake{next(self._ids):08d}"}
        if method == "generateContent":
            return json_response(200, payloads.generate(body, **identity))
        events = payloads.stream_events(body, **identity)
        if request.query.get("alt") != "sse":  # without alt=sse Gemini streams one JSON array
            return json_response(200, events)
        return await self._stream(request, (_data(orjson.dumps(event)) for event in events), failure,
                                  headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                                  failure_frame=_data)

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
        return json_response(200, answer)


def _data(payload: bytes) -> bytes:
    return b"data: " + payload + b"\r\n\r\n"


def main(argv: list[str] | None = None) -> None:
    """Runs the fake as a process (for the benchmark and for manual use)."""
    run_standalone(FakeGoogle, argv, description=__doc__.splitlines()[0],
                   key_help="require this x-goog-api-key")


if __name__ == "__main__":
    main()
