"""The Gemini API's wire types (Generative Language API, `v1beta`) and their decoding, apart from
translation.

Shapes follow the REST reference and the `google-genai` SDK's types (camelCase JSON):

    POST {base}/v1beta/{model}:generateContent               GenerateContentRequest -> GenerateContentResponse
    POST {base}/v1beta/{model}:streamGenerateContent?alt=sse  same request -> `data:` GenerateContentResponse
    POST {base}/v1beta/{model}:embedContent                  {content, ...} -> {embedding: {values}}
    POST {base}/v1beta/{model}:batchEmbedContents            {requests: [...]} -> {embeddings: [{values}]}

Errors are `google.rpc.Status` JSON, `{"error": {"code", "message", "status", "details": [Any...]}}`.
The details are decoded with the googleapis protos themselves (`ErrorInfo`, `RetryInfo`), so a
reason such as API_KEY_INVALID is read as a typed value, never found in the message text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, cast

from google.api import error_reason_pb2
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2

from services.adapters.json_values import loads_or_none
from services.adapters.upstream_errors import UpstreamFailure

API_VERSION = "v1beta"
API_KEY_HEADER = "x-goog-api-key"


# -- requests ---------------------------------------------------------------------------------
class Blob(TypedDict):
    """Bytes sent inline (base64 text on the wire)."""

    mimeType: str
    data: str


class FileData(TypedDict):
    """A file Gemini fetches itself: an uploaded file's URI or a public URL."""

    mimeType: str
    fileUri: str


class FunctionCallWire(TypedDict):
    """A call the model made; `args` is a JSON object, never a string."""

    name: str
    args: dict[str, Any]
    id: NotRequired[str]


class FunctionResponseWire(TypedDict):
    """The result of a call; `response` must be a JSON object."""

    name: str
    response: dict[str, Any]
    id: NotRequired[str]


class Part(TypedDict, total=False):
    """One part of a turn: exactly one of the data fields is set."""

    text: str
    thought: bool
    thoughtSignature: str
    inlineData: Blob
    fileData: FileData
    functionCall: FunctionCallWire
    functionResponse: FunctionResponseWire


class Content(TypedDict):
    """One turn: role "user" or "model"."""

    role: str
    parts: list[Part]


class GenerationConfig(TypedDict, total=False):
    """Sampling and output options."""

    temperature: float
    topP: float
    candidateCount: int
    maxOutputTokens: int
    stopSequences: list[str]
    presencePenalty: float
    frequencyPenalty: float
    seed: int
    responseLogprobs: bool
    logprobs: int
    responseMimeType: str
    responseJsonSchema: Any
    thinkingConfig: dict[str, Any]


class FunctionDeclaration(TypedDict, total=False):
    """A function the model may call; the arguments' schema as JSON Schema."""

    name: str
    description: str
    parametersJsonSchema: Any


class FunctionCallingConfig(TypedDict, total=False):
    """AUTO, ANY, NONE or VALIDATED, and the names ANY/VALIDATED may choose from."""

    mode: str
    allowedFunctionNames: list[str]


class GenerateContentRequest(TypedDict, total=False):
    """The body of generateContent and streamGenerateContent."""

    contents: list[Content]
    systemInstruction: dict[str, list[Part]]
    generationConfig: GenerationConfig
    tools: list[dict[str, list[FunctionDeclaration]]]
    toolConfig: dict[str, FunctionCallingConfig]


# -- responses --------------------------------------------------------------------------------
class UsageMetadata(TypedDict, total=False):
    """Token counts; `promptTokenCount` already includes `cachedContentTokenCount`."""

    promptTokenCount: int
    cachedContentTokenCount: int
    candidatesTokenCount: int
    toolUsePromptTokenCount: int
    thoughtsTokenCount: int
    totalTokenCount: int


class Candidate(TypedDict, total=False):
    """One generated answer (`index` is omitted when 0, as proto3 JSON does)."""

    content: Content
    finishReason: str
    index: int
    logprobsResult: dict[str, Any]


class GenerateContentResponse(TypedDict, total=False):
    """A whole answer, or one event of a stream."""

    candidates: list[Candidate]
    promptFeedback: dict[str, Any]
    usageMetadata: UsageMetadata
    modelVersion: str
    responseId: str


def as_response(obj: dict[str, Any]) -> GenerateContentResponse:
    """A parsed object read as a GenerateContentResponse (every field is optional; readers check types)."""
    return cast(GenerateContentResponse, obj)


# -- errors -----------------------------------------------------------------------------------
# google/rpc/code.proto: the HTTP status each canonical code stands for (a stream has no status).
CODE_HTTP_STATUS: Mapping[int, int] = {
    code_pb2.CANCELLED: 499, code_pb2.UNKNOWN: 500, code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504, code_pb2.NOT_FOUND: 404, code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403, code_pb2.UNAUTHENTICATED: 401, code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400, code_pb2.ABORTED: 409, code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501, code_pb2.INTERNAL: 500, code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}

# ErrorInfo reasons (google/api/error_reason.proto) that mean our key or account is unusable:
# Google answers these with 400 or 403, but for routing they are credential failures.
_R = error_reason_pb2.ErrorReason
CREDENTIAL_REASONS = frozenset(_R.Name(value) for value in (
    _R.API_KEY_INVALID, _R.API_KEY_SERVICE_BLOCKED, _R.API_KEY_HTTP_REFERRER_BLOCKED,
    _R.API_KEY_IP_ADDRESS_BLOCKED, _R.API_KEY_ANDROID_APP_BLOCKED, _R.API_KEY_IOS_APP_BLOCKED,
    _R.SERVICE_DISABLED, _R.BILLING_DISABLED, _R.CONSUMER_INVALID, _R.CONSUMER_SUSPENDED,
    _R.ACCESS_TOKEN_EXPIRED, _R.CREDENTIALS_MISSING, _R.ACCOUNT_STATE_INVALID, _R.GCP_SUSPENDED,
))
_ERROR_INFO = error_details_pb2.ErrorInfo.DESCRIPTOR.full_name
_RETRY_INFO = error_details_pb2.RetryInfo.DESCRIPTOR.full_name


def _detail(obj: Any) -> any_pb2.Any | None:
    """One `details` entry as a typed Any; None for a type this process does not know."""
    if not isinstance(obj, dict):
        return None
    try:
        return json_format.ParseDict(obj, any_pb2.Any(), ignore_unknown_fields=True)
    except json_format.ParseError:
        return None


@dataclass(frozen=True, slots=True)
class GoogleError:
    """A `google.rpc.Status` error body, decoded."""

    code: int | None = None  # the HTTP status Google put in the body
    message: str | None = None
    status: str | None = None  # the canonical code's name, e.g. "RESOURCE_EXHAUSTED"
    reasons: tuple[str, ...] = ()  # every ErrorInfo.reason
    retry_delay: float | None = None  # RetryInfo.retryDelay, in seconds

    @classmethod
    def from_object(cls, obj: Any) -> GoogleError:
        """Decodes a parsed body (or an in-stream `{"error": ...}` event)."""
        error = obj.get("error") if isinstance(obj, dict) else None
        if not isinstance(error, dict):
            return cls()
        reasons: list[str] = []
        retry_delay = None
        details = error.get("details")
        for item in details if isinstance(details, list) else ():
            detail = _detail(item)
            info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
            if detail is not None and detail.TypeName() == _ERROR_INFO and detail.Unpack(info):
                reasons.append(info.reason)
            elif detail is not None and detail.TypeName() == _RETRY_INFO and detail.Unpack(retry):
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
        code, message, status = error.get("code"), error.get("message"), error.get("status")
        return cls(code=code if isinstance(code, int) else None,
                   message=message if isinstance(message, str) else None,
                   status=status if isinstance(status, str) else None,
                   reasons=tuple(reasons), retry_delay=retry_delay)

    @classmethod
    def decode(cls, raw: bytes) -> GoogleError:
        """Decodes an error response body; an undecodable one (a proxy's HTML) yields an empty error."""
        return cls.from_object(loads_or_none(raw))

    @property
    def credentials_rejected(self) -> bool:
        """Whether an ErrorInfo says our key or account is unusable."""
        return any(reason in CREDENTIAL_REASONS for reason in self.reasons)

    def status_hint(self) -> int:
        """The HTTP status of an error that arrived inside a stream."""
        if self.code is not None and 400 <= self.code <= 599:
            return self.code
        if self.status in code_pb2.Code.keys():
            return CODE_HTTP_STATUS.get(code_pb2.Code.Value(self.status), 500)
        return 500

    def failure(self, status: int, retry_after: float | None = None) -> UpstreamFailure:
        """The provider-neutral failure for the error table. A rejected key counts as 401 whatever
        Google's status (400 for API_KEY_INVALID); a `Retry-After` header wins over RetryInfo."""
        effective = 401 if self.credentials_rejected else status
        return UpstreamFailure(status=effective, message=self.message,
                               retry_after=retry_after if retry_after is not None else self.retry_delay)
