"""Upstream attempts (docs/resilience.md): one attempt read until its first content, the loop
over candidates with retries and hedging, and the same for unary calls. Every attempt reports to
the circuit breakers (edge/health.py) through their coroutines, once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aggregator.adapter.v1 import adapter_service_pb2 as adapter_pb
from aggregator.routing.v1 import route_pb2
from edge.accounting import RequestRecord, UsageRecorder
from edge.health import CircuitBreakers
from edge.hedging import HedgeFailed, Opened, hedged, threshold_ms
from edge.resilience import (
    ATTEMPTS_HEADER,
    PROVIDER_HEADER,
    Deadline,
    deadline_spent,
    may_try_next,
    retry_delay,
)
from services.core import calls, telemetry
from services.core.config import Resilience
from services.core.errors import GatewayError, Reason

NOTHING_ANSWERED = "The upstream provider answered nothing."
T = TypeVar("T")


class Attempts:
    """Runs attempts against candidates; holds the breakers and the recorder (for hedge losers)."""

    def __init__(self, breakers: CircuitBreakers, recorder: UsageRecorder,
                 route_first_token_s: dict[tuple[str, str, str], float] | None = None) -> None:
        self.breakers = breakers
        self.recorder = recorder
        # (model id, provider, upstream model) -> a route's own first-token timeout (config).
        self.route_first_token_s = route_first_token_s or {}

    async def attempt(self, candidate: route_pb2.RouteCandidate, method: Any, message: Any,
                      policy: Resilience, deadline: Deadline) -> Opened:
        """One attempt, read until its first content: OpenAI's first chunk carries only the role,
        so role-only chunks are held (not sent) until content, a tool call, a finish or the end
        arrives; a provider that dies before that fails over invisibly (docs/resilience.md §2).
        Bounded by the first-token timeout and the request's deadline."""
        started = time.monotonic()
        remaining = deadline.remaining()
        first_token_s = policy.first_token_timeout_s
        if self.route_first_token_s:
            route = (candidate.public_model, candidate.endpoint.provider, candidate.upstream_model)
            first_token_s = self.route_first_token_s.get(route, first_token_s)
        stack = contextlib.AsyncExitStack()
        try:
            events = await stack.enter_async_context(calls.stream(method, message, timeout=remaining))
            held: list[adapter_pb.ChatResponse] = []
            try:
                async with asyncio.timeout(min(first_token_s, remaining)):
                    async for event in events:
                        held.append(event)
                        if event.has_content or event.finish_reason:
                            break
            except TimeoutError:
                raise GatewayError(Reason.UPSTREAM_TIMEOUT, "The upstream provider sent no first token in "
                                   "time." if first_token_s < remaining
                                   else deadline_spent().message) from None
            if not held:
                raise GatewayError(Reason.UPSTREAM_ERROR, NOTHING_ANSWERED)
        except BaseException as error:
            await stack.aclose()
            if isinstance(error, GatewayError) and may_try_next(error):
                await self.failed(candidate, error, started)
            raise
        return Opened(candidate, events, held, stack, started)

    async def first_content(self, candidates: list[route_pb2.RouteCandidate], record: RequestRecord,
                            policy: Resilience, deadline: Deadline,
                            open_attempt: Callable[[route_pb2.RouteCandidate], Awaitable[Opened]]) -> Opened:
        """The first attempt to bring content: candidates in the breakers' order, each retried
        per the policy (retry_delay), the next one hedged when the policy says so (hedging.py:
        after a fixed threshold or the candidate's observed percentile, read by `order`);
        504 once the deadline is spent."""
        order = await self.breakers.order(candidates)
        last_error: GatewayError | None = None
        index = 0
        while index < len(order):
            candidate = order[index]
            retry = 0
            while True:
                deadline.remaining()  # 504 once spent
                record.candidate = candidate
                record.attempts += 1
                try:
                    after_ms = threshold_ms(policy, self.breakers.known(candidate)) if retry == 0 else 0
                    if after_ms and index + 1 < len(order):
                        return await hedged(candidate, order[index + 1], open_attempt, after_ms, record,
                                            self.recorder)
                    return await open_attempt(candidate)
                except HedgeFailed as both:
                    last_error = both.error
                    index += 1  # both candidates failed: the one after them is next
                    break
                except GatewayError as error:
                    if not may_try_next(error):
                        raise
                    last_error = error
                    retry += 1
                    if not await self._backed_off(candidate, policy, error, retry, deadline):
                        break
            index += 1
        raise last_error or GatewayError(Reason.UPSTREAM_UNAVAILABLE, "No upstream provider is available.")

    async def first_answer(
        self,
        candidates: list[route_pb2.RouteCandidate],
        record: RequestRecord,
        policy: Resilience,
        deadline: Deadline,
        call: Callable[[route_pb2.RouteCandidate, Deadline], Awaitable[T]],
    ) -> T:
        """The answer of the first candidate that answers a unary call: the candidates in the
        breakers' order, each retried per the policy, within the request's deadline."""
        last_error: GatewayError | None = None
        for candidate in await self.breakers.order(candidates):
            retry = 0
            while True:
                remaining = deadline.remaining()
                record.candidate = candidate
                record.attempts += 1
                started = time.monotonic()
                try:
                    async with asyncio.timeout(remaining):
                        answer = await call(candidate, deadline)
                except TimeoutError:
                    error = deadline_spent()
                except GatewayError as failure:
                    error = failure
                else:
                    await self.breakers.succeeded(candidate)
                    record.first_token_at = time.monotonic()
                    await self.breakers.record(candidate, ok=True, ttft_s=record.first_token_at - started,
                                               output_tokens=0, duration_s=record.first_token_at - started)
                    record.headers.append((ATTEMPTS_HEADER, str(record.attempts)))
                    record.headers.append((PROVIDER_HEADER, candidate.endpoint.provider))
                    return answer
                if not may_try_next(error):
                    raise error
                last_error = error
                await self.failed(candidate, error, started)
                retry += 1
                if not await self._backed_off(candidate, policy, error, retry, deadline):
                    break
        raise last_error or GatewayError(Reason.UPSTREAM_UNAVAILABLE, "No upstream provider is available.")

    async def failed(self, candidate: route_pb2.RouteCandidate, error: GatewayError, started: float) -> None:
        """An attempt that failed before its first content, in the metrics and the breakers."""
        telemetry.UPSTREAM_FAILURES.labels(candidate.endpoint.provider, error.reason.value).inc()
        if error.retriable:  # the endpoint's health; a refused parameter says nothing about it
            await self.breakers.failed(candidate)
        await self.breakers.record(candidate, ok=False, ttft_s=None, output_tokens=0,
                                   duration_s=time.monotonic() - started)

    @staticmethod
    async def _backed_off(candidate: route_pb2.RouteCandidate, policy: Resilience, error: GatewayError,
                          retry: int, deadline: Deadline) -> bool:
        """Waits before retry number `retry` of the same candidate; False when the policy (or the
        error's Retry-After, or the deadline) says to move on instead (retry_delay)."""
        delay = retry_delay(policy, error, retry, deadline)
        if delay is None:
            return False
        telemetry.UPSTREAM_RETRIES.labels(candidate.endpoint.provider).inc()
        await asyncio.sleep(delay)
        return True
