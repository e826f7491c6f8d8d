"""Circuit breakers: a failing endpoint goes behind the healthy ones, and comes back."""

from __future__ import annotations

from aggregator.routing.v1 import route_pb2
from edge.health import CircuitBreakers
from services.core.errors import GatewayError, Reason
from tests.unit.edge.test_pipeline import Script, event, make, new_record, run_chat


def candidate(provider: str, base_url: str = "http://x") -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(endpoint=route_pb2.Endpoint(provider=provider, base_url=base_url))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names(candidates: list[route_pb2.RouteCandidate]) -> list[str]:
    return [c.endpoint.provider for c in candidates]


async def test_opens_after_consecutive_failures_and_moves_last() -> None:
    clock = Clock()
    breakers = CircuitBreakers(failure_threshold=3, open_seconds=30, clock=clock)
    a, b, c = candidate("a"), candidate("b"), candidate("c")
    for _ in range(2):
        await breakers.failed(a)
    assert names(await breakers.order([a, b, c])) == ["a", "b", "c"]  # two failures: still closed
    await breakers.failed(a)
    assert breakers.is_open(a) and names(await breakers.order([a, b, c])) == ["b", "c", "a"]


async def test_a_success_resets_the_count() -> None:
    breakers = CircuitBreakers(failure_threshold=2, clock=Clock())
    a = candidate("a")
    await breakers.failed(a)
    await breakers.succeeded(a)
    await breakers.failed(a)
    assert not breakers.is_open(a)


async def test_half_open_after_the_pause_then_reopens_or_closes() -> None:
    clock = Clock()
    breakers = CircuitBreakers(failure_threshold=1, open_seconds=30, clock=clock)
    a, b = candidate("a"), candidate("b")
    await breakers.failed(a)
    assert names(await breakers.order([a, b])) == ["b", "a"]
    clock.now += 31
    assert names(await breakers.order([a, b])) == ["a", "b"]  # half-open: one more try in its place
    await breakers.failed(a)
    assert breakers.is_open(a)  # the trial failed: open again
    clock.now += 31
    await breakers.succeeded(a)
    assert not breakers.is_open(a) and names(await breakers.order([a, b])) == ["a", "b"]


async def test_endpoints_are_told_apart_by_base_url() -> None:
    breakers = CircuitBreakers(failure_threshold=1, clock=Clock())
    await breakers.failed(candidate("a", "http://one"))
    assert breakers.is_open(candidate("a", "http://one")) and not breakers.is_open(candidate("a", "http://two"))


async def test_pipeline_stops_leading_with_a_dead_provider() -> None:
    pipeline, clients = make({
        "p1": Script(error=GatewayError(Reason.UPSTREAM_UNAVAILABLE, "p1 down")),
        "p2": Script([event("ok")]),
    })
    for _ in range(3):
        assert await run_chat(pipeline, new_record()) == [b"ok"]
    clients.adapter.calls.clear()
    assert await run_chat(pipeline, new_record()) == [b"ok"]
    assert [c.candidate.endpoint.provider for c in clients.adapter.calls] == ["p2"]  # p1 went last


async def test_refused_parameters_do_not_count_against_health() -> None:
    refused = GatewayError(Reason.UNSUPPORTED_PARAMETER, "no logprobs here", param="logprobs")
    pipeline, clients = make({"p1": Script(error=refused), "p2": Script([event("ok")])})
    for _ in range(5):
        assert await run_chat(pipeline, new_record()) == [b"ok"]
    clients.adapter.calls.clear()
    await run_chat(pipeline, new_record())
    assert [c.candidate.endpoint.provider for c in clients.adapter.calls] == ["p1", "p2"]
