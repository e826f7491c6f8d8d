"""The request pipeline shared by the HTTP and the gRPC faces:

    authenticate -> validate -> route -> rate limits (one Redis round trip)
        -> response cache (when asked) -> adapt -> account

Routing answers ordered candidates; candidates whose circuit breaker is open (edge/health.py) go
last; a retriable failure before the first content moves on to the next candidate, with retries,
one deadline per request and hedging as the model's policy says (edge/attempts.py,
docs/resilience.md). After the first content the stream belongs to that candidate.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf import json_format, timestamp_pb2

from aggregator.adapter.v1 import adapter_service_pb2 as adapter_pb
from aggregator.auth.v1 import auth_service_pb2 as auth_pb
from aggregator.openai.v1 import chat_pb2, completion_pb2, embedding_pb2, image_pb2
from aggregator.routing.v1 import route_pb2
from aggregator.routing.v1 import routing_service_pb2 as routing_pb
from edge.accounting import RequestRecord, UsageRecorder
from edge.attempts import Attempts
from edge.clients import ServiceClients
from edge.health import CircuitBreakers
from edge.hedging import Opened
from edge.resilience import (
    ATTEMPTS_HEADER,
    HEDGE_HEADER,
    PROVIDER_HEADER,
    TIMEOUT_HEADER,
    Deadline,
    header_ms,
    output_tokens,
    request_policy,
)
from edge.validation import validate_chat, validate_completion, validate_embedding
from services.adapters.capabilities import ALWAYS_ACCEPTED
from services.analytics import bodies
from services.auth.audit import AuditTrail, audited_check
from services.auth.audit_repository import client_ip
from services.auth.org_settings import OrganizationSettingsBook
from services.core import calls, telemetry
from services.core.config import Resilience
from services.core.errors import GatewayError, Reason, quote
from services.core.rpc import metadata_value
from services.limits.budgets import (
    COST_UNIT,
    REQUESTS_UNIT,
    TOKENS_UNIT,
    key_budget,
    worst_case_micro,
    worst_case_tokens,
)
from services.limits.limiter import Limiter
from services.limits.policy import estimate, key_windows, rule_windows
from services.limits.response_cache import Filling, ResponseCache

BEARER = "bearer "


def bearer_key(authorization: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header; MISSING_API_KEY otherwise."""
    if (
        authorization
        and authorization[: len(BEARER)].lower() == BEARER
        and authorization[len(BEARER) :].strip()
    ):
        return authorization[len(BEARER) :].strip()
    raise GatewayError(
        Reason.MISSING_API_KEY,
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )


def check_model_allowed(principal: auth_pb.Principal, models: list[str]) -> None:
    """A key with `allowed_models` may use only those ids (fallbacks included)."""
    if not principal.HasField("allowed_models"):
        return
    allowed = {v.string_value for v in principal.allowed_models.values}
    for model in models:
        if model not in allowed:
            raise GatewayError(
                Reason.MODEL_NOT_ALLOWED,
                f"This API key is not allowed to use the model {quote(model, '`')}.",
                param="model",
            )


def _image_count(operation: Any) -> int:
    """How many images a request asks for: its `n` (of the JSON body or of the upload's form); 1
    when absent."""
    if isinstance(operation, image_pb2.ImageGenerationRequest):
        return max(operation.n, 1) if operation.HasField("n") else 1
    value = str((getattr(operation, "fields", {}) or {}).get("n", "1"))
    return max(int(value), 1) if value.isdigit() else 1


def max_output(request: Any) -> int:
    """The most a chat or completion request lets the model generate; 0 when it does not say."""
    for name in ("max_completion_tokens", "max_tokens"):
        if name in request.DESCRIPTOR.fields_by_name and request.HasField(name):
            return int(getattr(request, name))
    return 0


class Pipeline:
    """Runs requests through the services; owns no state beyond its collaborators."""

    def __init__(self, clients: ServiceClients, recorder: UsageRecorder, *,
                 resilience: Resilience | None = None, model_resilience: dict[str, Resilience] | None = None,
                 route_first_token_s: dict[tuple[str, str, str], float] | None = None,
                 breakers: CircuitBreakers | None = None, audit: AuditTrail | None = None,
                 limiter: Limiter | None = None, rules: Any = None,
                 cache: ResponseCache | None = None, quotas: Any = None,
                 org_settings: OrganizationSettingsBook | None = None) -> None:
        self.clients = clients
        self.audit = audit  # where permission denials go (docs/architecture.md §2.11)
        self.limiter = limiter  # rate limits (docs/limits.md); None: none are enforced
        self.rules = rules  # rate-limit rules (services/limits/rules.py RuleBook), when served
        self.cache = cache  # the response cache (services/limits/response_cache.py); None: no caching
        self.quotas = quotas  # organization quotas (services/limits/quotas.py QuotaBook), when served
        # Each organization's store_prompts and default provider preferences (auth/org_settings.py).
        self.org_settings = org_settings
        self.recorder = recorder
        self._resilience = resilience or Resilience()  # timeouts, retries, hedging (docs/resilience.md)
        self._policies = model_resilience or {}
        self.attempts = Attempts(breakers or CircuitBreakers(), recorder, route_first_token_s or {})

    def start(self, context: Any, endpoint: str, model: str, stream: bool) -> RequestRecord:
        """Opens the record of a request; its id is Envoy's `x-request-id` where there is one."""
        request_id = metadata_value(context, "x-request-id") or uuid.uuid4().hex
        telemetry.request_id_var.set(request_id)
        forwarded = metadata_value(context, "x-forwarded-for")
        peer = None if forwarded or not hasattr(context, "peer") else context.peer()
        ip = client_ip(forwarded, peer)
        agent = (metadata_value(context, "user-agent") or "")[:512]
        return RequestRecord(request_id=request_id, endpoint=endpoint, public_model=model, stream=stream,
                             client_ip=ip or "", user_agent=agent)

    async def authenticate(self, context: Any, record: RequestRecord | None = None) -> auth_pb.Principal:
        """The caller's principal, once it is known to hold the permission the running RPC declares
        (`@requires`, services/auth/permissions.py): PERMISSION_DENIED otherwise, recorded in the
        audit trail off the request path (docs/architecture.md §2.11)."""
        key = bearer_key(metadata_value(context, "authorization"))
        answer = await calls.unary(self.clients.auth.Authenticate, auth_pb.AuthenticateRequest(api_key=key))
        audited_check(self.audit, answer.principal, context)
        if record is not None:
            principal = answer.principal
            record.organization_id = principal.organization_id
            record.api_key_id = principal.api_key_id
            record.user_id = principal.user_id
            if self.org_settings is not None and principal.organization_id:
                settings = await self.org_settings.of(principal.organization_id)
                record.store_bodies = settings.store_prompts
                record.default_provider = settings.provider
            if principal.HasField("provider"):  # the key's defaults win over its organization's
                record.default_provider = {**(record.default_provider or {}),
                                           **json_format.MessageToDict(principal.provider)}
        return answer.principal

    @staticmethod
    def keep_request(record: RequestRecord, request: Any) -> None:
        """Keeps the request body for the request log, where the organization opted in."""
        if record.store_bodies:
            document = (json_format.MessageToDict(request, preserving_proto_field_name=True)
                        if hasattr(request, "DESCRIPTOR") else dict(getattr(request, "fields", {})))
            record.request_body = bodies.bounded(orjson.dumps(document))

    async def _candidates(
        self, model: str, fallbacks: list[str], model_type: str, created_at: float, deadline: Deadline,
        request: Any = None, defaults: dict[str, Any] | None = None,
    ) -> list[route_pb2.RouteCandidate]:
        """The candidates, priced as in effect when the request arrived (docs/pricing.md §3), chosen
        by the provider preferences: the request's own fields over its key's defaults, over its
        organization's (docs/routing.md §2)."""
        at = timestamp_pb2.Timestamp()
        at.FromNanoseconds(int(created_at * 1e9))
        message = routing_pb.ResolveRouteRequest(model=model, fallback_models=fallbacks,
                                                 model_type=model_type, at=at)
        asked = request is not None and request.HasField("provider")
        if defaults:
            message.provider.update(defaults)
            if asked:
                message.provider.update(json_format.MessageToDict(request.provider))
        elif asked:
            message.provider.CopyFrom(request.provider)
        if request is not None and "require_parameters" in message.provider.fields:
            message.parameters.extend(sorted(f.name for f, _ in request.ListFields()
                                             if f.name not in ALWAYS_ACCEPTED))
        answer = await calls.unary(self.clients.routing.ResolveRoute, message, timeout=deadline.remaining())
        return list(answer.candidates)

    def chat(
        self, request: chat_pb2.ChatCompletionRequest, context: Any, record: RequestRecord
    ) -> AsyncGenerator[adapter_pb.ChatResponse, None]:
        """Yields the adapter's events of the first candidate that answers."""
        return self._streamed(request, context, record, validate_chat, "chat", self.clients.adapter.Chat,
                              adapter_pb.ChatRequest)

    def complete(
        self, request: completion_pb2.CompletionRequest, context: Any, record: RequestRecord
    ) -> AsyncGenerator[adapter_pb.ChatResponse, None]:
        """Legacy completions: the adapter's events of the first candidate that answers."""
        return self._streamed(request, context, record, validate_completion, "completion",
                              self.clients.adapter.Complete, adapter_pb.CompleteRequest)

    async def _streamed(
        self, request: Any, context: Any, record: RequestRecord, validate: Callable[[Any], None],
        model_type: str, method: Any, call_type: type[Any],
    ) -> AsyncGenerator[adapter_pb.ChatResponse, None]:
        """Streams the first candidate whose first event arrives; failures before it fall through."""
        principal = await self.authenticate(context, record)
        self.keep_request(record, request)
        validate(request)
        check_model_allowed(principal, [request.model, *request.models])
        policy, deadline = self._deadline(request.model, context, record)
        candidates = await self._candidates(request.model, list(request.models), model_type,
                                            record.created_at, deadline, request, record.default_provider)
        record.prompt_bytes = request.ByteSize()
        record.request = request  # a reference, for the estimate of a stream cut before its usage
        await self.limit(principal, request.model, candidates, record, context, max_output(request))
        lookup = self.cache.lookup(context, principal, request) if self.cache is not None else None
        filling: Filling | None = None
        if lookup is not None:
            assert self.cache is not None
            cached = await self.cache.get(lookup)
            record.headers.append(("x-cache", "HIT" if cached else "MISS"))
            telemetry.CACHE_LOOKUPS.labels("hit" if cached else "miss").inc()
            if cached:
                # The same bytes again, streamed or not; nothing is asked upstream (cost 0).
                record.candidate, record.cache_hit = candidates[0], True
                await self.send_headers(context, record)
                for event in cached:
                    self._observe(record, event)
                    yield event
                return
            filling = Filling(lookup)

        def open_attempt(candidate: route_pb2.RouteCandidate) -> Awaitable[Opened]:
            message = call_type(candidate=candidate, request=request, request_id=record.request_id,
                                timeout_ms=deadline.remaining_ms())
            return self.attempts.attempt(candidate, method, message, policy, deadline)

        opened = await self.attempts.first_content(candidates, record, policy, deadline, open_attempt)
        ok = False
        try:
            await self.attempts.breakers.succeeded(opened.candidate)
            record.candidate = opened.candidate
            record.headers.append((ATTEMPTS_HEADER, str(record.attempts)))
            record.headers.append((PROVIDER_HEADER, opened.candidate.endpoint.provider))
            await self.send_headers(context, record)
            for event in opened.held:  # the role-only chunks held until content, then the content
                self._observe(record, event)
                if filling is not None:
                    filling.add(event)
                yield event
            async for event in opened.events:
                self._observe(record, event)
                if filling is not None:
                    filling.add(event)
                yield event
            ok = True
            if filling is not None and self.cache is not None:  # complete: worth replaying
                await self.cache.put(filling)
        finally:
            await opened.stack.aclose()
            await self.attempts.breakers.record(
                opened.candidate, ok=ok,
                ttft_s=record.first_token_at - opened.started if record.first_token_at else None,
                output_tokens=output_tokens(record), duration_s=time.monotonic() - opened.started)

    def _deadline(self, model: str, context: Any, record: RequestRecord) -> tuple[Resilience, Deadline]:
        """The model's resilience policy with the client's hedging header applied, and the
        request's deadline (docs/resilience.md §1, §3); 400 for a malformed header."""
        policy = request_policy(self._policies.get(model, self._resilience),
                                metadata_value(context, HEDGE_HEADER))
        requested = header_ms(metadata_value(context, TIMEOUT_HEADER), TIMEOUT_HEADER)
        deadline = Deadline.of(policy, requested, record.started)
        # A native gRPC client's own deadline (grpc-timeout) shortens it too.
        left = context.time_remaining() if hasattr(context, "time_remaining") else None
        if left is not None:
            deadline.at = min(deadline.at, time.monotonic() + left)
        return policy, deadline

    async def limit(self, principal: auth_pb.Principal, model: str,
                    candidates: list[route_pb2.RouteCandidate], record: RequestRecord, context: Any,
                    max_output_tokens: int = 0, images: int = 0) -> None:
        """Counts the request in every rate-limit window that applies to it (the key's own limits
        and the rules), in one Redis round trip, or raises RATE_LIMITED; the answer's headers tell
        the client where it stands (gathered in `record.headers`; docs/limits.md). Token and cost
        windows count an estimate, settled to the true amounts when the request ends
        (UsageRecorder.finish)."""
        if self.limiter is None:
            return
        windows = key_windows(principal)
        if self.rules is not None:
            windows += rule_windows(await self.rules.for_request(
                principal.organization_id, principal.api_key_id, principal.user_id, model))
        now = datetime.now(UTC)
        budget = key_budget(principal, now)
        budgets = [budget] if budget is not None else []
        if self.quotas is not None:
            for quota in await self.quotas.of(principal.organization_id):
                budgets += quota.budgets(now)
        if not windows and not budgets:
            return
        first = candidates[0] if candidates else None
        guess = estimate(record.prompt_bytes, max_output_tokens, first.input_per_1k if first else "0",
                         first.output_per_1k if first else "0")
        worst = {COST_UNIT: worst_case_micro(record.prompt_bytes, max_output_tokens, candidates, images),
                 TOKENS_UNIT: worst_case_tokens(record.prompt_bytes, max_output_tokens, candidates),
                 REQUESTS_UNIT: 1}
        holds = [worst[b.unit] for b in budgets]
        record.admission = await self.limiter.admit(windows, [guess.amount(w.kind) for w in windows], budgets,
                                                    holds, record.request_id)
        record.headers.extend(record.admission.headers())

    @staticmethod
    async def send_headers(context: Any, record: RequestRecord) -> None:
        """Sends the response headers gathered for the request (rate limits, x-cache) once, before
        its first answer; nothing when there are none (no extra gRPC batch per request)."""
        if record.headers and not record.headers_sent:
            record.headers_sent = True
            await context.send_initial_metadata(tuple(record.headers))

    @staticmethod
    def _observe(record: RequestRecord, event: adapter_pb.ChatResponse) -> None:
        record.upstream_answered = True
        if event.HasField("usage"):
            record.usage = event.usage
        if event.finish_reason:
            record.finish_reason = event.finish_reason
        if record.store_bodies and event.body:
            record.response_chunks.append(event.body)
        if event.has_content:
            record.content_events += 1
            record.content_chars += event.content_chars
            if record.first_token_at is None:
                record.first_token_at = time.monotonic()

    async def embed(
        self, request: embedding_pb2.EmbeddingRequest, context: Any, record: RequestRecord
    ) -> adapter_pb.EmbedResponse:
        """The embeddings of the first candidate that answers."""
        principal = await self.authenticate(context, record)
        self.keep_request(record, request)
        validate_embedding(request)
        check_model_allowed(principal, [request.model, *request.models])
        policy, deadline = self._deadline(request.model, context, record)
        candidates = await self._candidates(request.model, list(request.models), "embedding",
                                            record.created_at, deadline, request, record.default_provider)
        record.prompt_bytes = request.ByteSize()
        await self.limit(principal, request.model, candidates, record, context)

        async def call(candidate: route_pb2.RouteCandidate, deadline: Deadline) -> adapter_pb.EmbedResponse:
            message = adapter_pb.EmbedRequest(candidate=candidate, request=request,
                                              request_id=record.request_id,
                                              timeout_ms=deadline.remaining_ms())
            return await calls.unary(self.clients.adapter.Embed, message, timeout=deadline.remaining())

        answer = await self.attempts.first_answer(candidates, record, policy, deadline, call)
        record.usage = answer.usage
        if record.store_bodies:
            record.response_chunks.append(answer.body)
        await self.send_headers(context, record)
        return answer

    async def image(
        self,
        operation: image_pb2.ImageGenerationRequest | image_pb2.ImageUpload,
        model: str,
        fallbacks: list[str],
        context: Any,
        record: RequestRecord,
    ) -> adapter_pb.ImageResponse:
        """Images from the first candidate that answers: a generation, an edit or a variation."""
        principal = await self.authenticate(context, record)
        self.keep_request(record, operation)
        if not model:
            raise GatewayError(Reason.INVALID_REQUEST, "you must provide a model parameter", param="model")
        check_model_allowed(principal, [model, *fallbacks])
        policy, deadline = self._deadline(model, context, record)
        generation = operation if isinstance(operation, image_pb2.ImageGenerationRequest) else None
        candidates = await self._candidates(model, fallbacks, "image", record.created_at, deadline,
                                            generation, record.default_provider)
        await self.limit(principal, model, candidates, record, context, images=_image_count(operation))
        field = "generation" if isinstance(operation, image_pb2.ImageGenerationRequest) else "upload"

        async def call(candidate: route_pb2.RouteCandidate, deadline: Deadline) -> adapter_pb.ImageResponse:
            message = adapter_pb.ImageRequest(candidate=candidate, request_id=record.request_id,
                                              timeout_ms=deadline.remaining_ms(), **{field: operation})
            return await calls.unary(self.clients.adapter.Image, message, timeout=deadline.remaining())

        answer = await self.attempts.first_answer(candidates, record, policy, deadline, call)
        if answer.HasField("usage"):
            record.usage = answer.usage
        record.images = answer.images
        if record.store_bodies:
            record.response_chunks.append(answer.body)
        await self.send_headers(context, record)
        return answer
