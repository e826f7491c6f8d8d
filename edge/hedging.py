"""Hedged attempts (docs/resilience.md §4): when the first candidate has not brought its first
content within the threshold (`threshold_ms`: the policy's `hedge_after_ms`, or with
`hedge_percentile` the first candidate's observed percentile of times to first token), the next
candidate starts too; the first to bring content wins and the other is cancelled.

The loser is accounted on its own: a usage event with the derived request id `<id>.hedge`,
status cancelled, billing the prompt the provider consumed (estimated: a cancelled stream never
reports usage), so the ledger matches what the provider will invoice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aggregator.adapter.v1 import adapter_service_pb2 as adapter_pb
from aggregator.routing.v1 import route_pb2
from edge.accounting import RequestRecord, UsageRecorder
from edge.resilience import may_try_next
from services.core import telemetry
from services.core.config import Resilience
from services.core.errors import GatewayError
from services.routing.health import Health

HEDGE_SUFFIX = ".hedge"
# The least threshold an observed percentile gives: under it a hedge would double the load of an
# endpoint that answers fast anyway, for little gain (docs/resilience.md §4).
MIN_OBSERVED_HEDGE_MS = 50


def threshold_ms(policy: Resilience, observed: Health | None) -> int:
    """After how many ms without first content the next candidate starts; 0: no hedging. With
    `hedge_percentile`, the first candidate's observed percentile (read with the breakers by
    `order`: no round trip of its own), not under MIN_OBSERVED_HEDGE_MS; `hedge_after_ms` while
    the endpoint has too few samples (or none read)."""
    if policy.hedge_percentile and observed is not None:
        seconds = observed.ttft_percentile_s(policy.hedge_percentile)
        if seconds is not None:
            return max(MIN_OBSERVED_HEDGE_MS, math.ceil(seconds * 1000))
    return policy.hedge_after_ms


@dataclass(slots=True)
class Opened:
    """An attempt whose first content arrived: the events held until then, the rest to read, and
    the stack that closes its call."""

    candidate: route_pb2.RouteCandidate
    events: AsyncIterator[adapter_pb.ChatResponse]
    held: list[adapter_pb.ChatResponse]
    stack: contextlib.AsyncExitStack
    started: float


class HedgeFailed(Exception):
    """Both hedged candidates failed with retriable errors; `error` is the later one."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


def account_loser(record: RequestRecord, candidate: route_pb2.RouteCandidate,
                  recorder: UsageRecorder) -> None:
    """The usage event of a hedged attempt that lost: its own derived id, cancelled, the prompt
    estimated as consumed."""
    loser = dataclasses.replace(
        record, request_id=record.request_id + HEDGE_SUFFIX, candidate=candidate, attempts=1, usage=None,
        content_events=0, content_chars=0, upstream_answered=True, first_token_at=None, admission=None,
        headers=[], store_bodies=False, response_chunks=[], finish_reason="")
    loser.cancel()
    recorder.finish(loser)


async def _settle(task: asyncio.Task[Opened]) -> None:
    """Cancels `task` (or closes the call it opened) and waits for it."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        opened = await task
        await opened.stack.aclose()


async def hedged(first: route_pb2.RouteCandidate, second: route_pb2.RouteCandidate,
                 open_attempt: Callable[[route_pb2.RouteCandidate], Awaitable[Opened]],
                 after_ms: int, record: RequestRecord, recorder: UsageRecorder) -> Opened:
    """The first of `first` and `second` (started `after_ms` later, if `first` has brought
    nothing by then) to bring content. A failure of `first` before the hedge starts is raised as
    it is (the caller moves on as without hedging); a non-retriable failure is raised at once."""
    tasks: dict[asyncio.Task[Opened], route_pb2.RouteCandidate] = {}
    tasks[asyncio.ensure_future(open_attempt(first))] = first
    winner: asyncio.Task[Opened] | None = None
    try:
        done, _ = await asyncio.wait(tasks, timeout=after_ms / 1000.0)
        if done:
            winner = next(iter(done))
            return winner.result()
        record.attempts += 1
        tasks[asyncio.ensure_future(open_attempt(second))] = second
        pending: set[asyncio.Task[Opened]] = set(tasks)
        last: GatewayError | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is None:
                    winner = task
                    telemetry.HEDGES.labels("hedge" if tasks[task] is second else "first").inc()
                    return task.result()
                if not isinstance(error, GatewayError) or not may_try_next(error):
                    raise error
                last = error
        assert last is not None
        telemetry.HEDGES.labels("failed").inc()
        raise HedgeFailed(last)
    finally:
        for task, candidate in tasks.items():
            if task is winner:
                continue
            lost = not task.done() or (not task.cancelled() and task.exception() is None)
            await _settle(task)
            # Without a winner (the client left, or a failure the next candidate cannot mend) the
            # request's own record covers the first candidate; the hedge is billed apart.
            if lost and (winner is not None or candidate is second):
                account_loser(record, candidate, recorder)
