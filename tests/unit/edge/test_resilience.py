"""The rules of attempts (edge/resilience.py), hedging (edge/hedging.py) and their config keys."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from aggregator.adapter.v1 import adapter_service_pb2 as adapter_pb
from aggregator.events.v1 import usage_event_pb2 as ev
from aggregator.routing.v1 import route_pb2
from edge.accounting import RequestRecord, UsageRecorder
from edge.hedging import MIN_OBSERVED_HEDGE_MS, HedgeFailed, Opened, hedged, threshold_ms
from edge.resilience import Deadline, header_ms, request_policy, retry_delay
from services.core.config import ConfigError, Resilience, parse_config
from services.core.errors import GatewayError, Reason
from services.routing import ttft_distribution as dist
from services.routing.health import Health
from services.runtime.envoy import DEFAULT_DESCRIPTOR_PATH, DEFAULT_LUA_PATH, render_bootstrap

POLICY = Resilience(retries=2, backoff_initial_s=0.5, backoff_max_s=0.8, max_retry_after_s=3.0)
BUSY = GatewayError(Reason.UPSTREAM_RATE_LIMITED, "busy")


def far() -> Deadline:
    return Deadline(time.monotonic() + 60)


# --- retry_delay, Deadline, headers --------------------------------------------------------------

def test_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(7)
    first = [retry_delay(POLICY, BUSY, 1, far(), rng) for _ in range(200)]
    second = [retry_delay(POLICY, BUSY, 2, far(), rng) for _ in range(200)]
    assert all(d is not None and 0 <= d <= 0.5 for d in first)
    assert all(d is not None and 0 <= d <= 0.8 for d in second)  # 1.0 capped at backoff_max_s
    assert max(second) > 0.5  # and grown past the first ceiling


def test_no_retry_past_the_limit_or_for_a_failure_that_would_repeat() -> None:
    assert retry_delay(POLICY, BUSY, 3, far()) is None
    assert retry_delay(POLICY, GatewayError(Reason.UPSTREAM_BAD_REQUEST, "no"), 1, far()) is None
    assert retry_delay(Resilience(), BUSY, 1, far()) is None  # retries default to 0


def limited(retry_after: float) -> GatewayError:
    return GatewayError(Reason.UPSTREAM_RATE_LIMITED, "x", retry_after=retry_after)


def test_retry_after_is_honoured_up_to_its_limit() -> None:
    assert retry_delay(POLICY, limited(2.5), 1, far()) == 2.5
    assert retry_delay(POLICY, limited(3.5), 1, far()) is None


def test_no_wait_the_deadline_cannot_afford() -> None:
    assert retry_delay(POLICY, limited(2), 1, Deadline(time.monotonic() + 1.0)) is None


def test_the_client_may_shorten_the_deadline_never_lengthen_it() -> None:
    policy = Resilience(total_timeout_s=10)
    now = time.monotonic()
    assert Deadline.of(policy, 2000, now).at == pytest.approx(now + 2)
    assert Deadline.of(policy, 60_000, now).at == pytest.approx(now + 10)
    assert Deadline.of(policy, None, now).at == pytest.approx(now + 10)


def test_a_spent_deadline_is_a_504() -> None:
    with pytest.raises(GatewayError) as info:
        Deadline(time.monotonic() - 0.1).remaining()
    assert info.value.http_status == 504 and info.value.reason is Reason.UPSTREAM_TIMEOUT


@pytest.mark.parametrize("value", ["soon", "-1", "1.5", "99999999999"])
def test_a_malformed_header_is_a_400(value: str) -> None:
    with pytest.raises(GatewayError) as info:
        header_ms(value, "x-aggregator-timeout-ms")
    assert info.value.http_status == 400 and info.value.param == "x-aggregator-timeout-ms"


def test_the_hedge_header_takes_milliseconds_or_a_percentile() -> None:
    model = Resilience(hedge_after_ms=400, hedge_percentile=90)
    assert request_policy(model, None) == model
    fixed = request_policy(model, "250")
    assert (fixed.hedge_after_ms, fixed.hedge_percentile) == (250, 0)  # a number is a fixed threshold
    off = request_policy(model, "0")
    assert (off.hedge_after_ms, off.hedge_percentile) == (0, 0)
    observed = request_policy(model, "p95")  # the model's hedge_after_ms until data exists
    assert (observed.hedge_after_ms, observed.hedge_percentile) == (400, 95)
    assert request_policy(Resilience(), " p50 ").hedge_percentile == 50


@pytest.mark.parametrize("value", ["p49", "p100", "p", "P95", "95p", "p9", "p95.5", "soon", "1.5", "-1"])
def test_a_malformed_hedge_header_is_a_400(value: str) -> None:
    with pytest.raises(GatewayError) as info:
        request_policy(Resilience(), value)
    assert info.value.http_status == 400 and info.value.param == "x-aggregator-hedge-ms"
    assert "p50 to p99" in info.value.message


def observed(ttft_s: float, samples: int) -> Health:
    return Health(ttft_counts=tuple(samples if i == dist.bucket(ttft_s) else 0 for i in range(dist.BUCKETS)))


def test_the_hedge_threshold_follows_the_observed_percentile() -> None:
    policy = Resilience(hedge_after_ms=0, hedge_percentile=95)
    assert threshold_ms(policy, observed(0.4, 30)) == pytest.approx(400, rel=0.2)
    assert threshold_ms(policy, observed(0.012, 30)) == MIN_OBSERVED_HEDGE_MS  # never under the floor
    assert threshold_ms(policy, observed(0.4, 19)) == 0  # too few samples: hedge_after_ms (0: none)
    assert threshold_ms(policy, None) == 0
    assert threshold_ms(Resilience(hedge_after_ms=300, hedge_percentile=95), Health()) == 300
    assert threshold_ms(Resilience(hedge_after_ms=300), observed(0.4, 30)) == 300  # percentile off


# --- config -------------------------------------------------------------------------------------

def config(**extra: Any) -> Any:
    return parse_config({
        "providers": [{"name": "p", "kind": "openai_compatible", "base_url": "http://x/v1",
                       "stream_options": False}],
        "models": [{"id": "m", "routes": [{"provider": "p", "model": "u", "input_per_1k": "1",
                                            "output_per_1k": "1"}], **extra}],
        "resilience": {"total_timeout_s": 30, "retries": 1},
    })


def test_the_section_and_a_model_override() -> None:
    parsed = config(resilience={"hedge_after_ms": 250, "total_timeout_s": 90})
    assert (parsed.resilience.total_timeout_s, parsed.resilience.retries) == (30.0, 1)
    own = parsed.models[0].resilience
    assert (own.hedge_after_ms, own.total_timeout_s, own.retries) == (250, 90.0, 1)  # the rest inherited
    assert parsed.longest_deadline_s == 90.0
    assert parsed.providers[0].stream_options is False
    assert parsed.route_first_token_timeouts == {}


def test_a_routes_own_first_token_timeout() -> None:
    parsed = config()
    raw = {"providers": [{"name": "p", "kind": "openai", "base_url": "http://x/v1"}],
           "models": [{"id": "m", "routes": [{"provider": "p", "model": "u", "input_per_1k": "1",
                                               "output_per_1k": "1", "first_token_timeout_s": 2.5}]}]}
    assert parse_config(raw).route_first_token_timeouts == {("m", "p", "u"): 2.5}
    raw["models"][0]["routes"][0]["first_token_timeout_s"] = 0  # type: ignore[index]
    with pytest.raises(ConfigError, match="must be positive"):
        parse_config(raw)
    assert parsed.models[0].routes[0].first_token_timeout_s is None


def test_the_hedge_percentile_key() -> None:
    assert config(resilience={"hedge_percentile": 95}).models[0].resilience.hedge_percentile == 95
    assert config().resilience.hedge_percentile == 0  # off by default


@pytest.mark.parametrize(("policy", "message"), [
    ({"total_timeout": 3}, "unknown key 'total_timeout'"), ({"retries": -1}, "retries must be positive"),
    ({"first_token_timeout_s": 0}, "must be positive"), ({"hedge_after_ms": "soon"}, "must be a number"),
    ({"hedge_percentile": 49}, "hedge_percentile must be 0 .off. or a whole number from 50 to 99"),
    ({"hedge_percentile": 100}, "hedge_percentile must be 0"),
    ({"hedge_percentile": 95.5}, "hedge_percentile must be 0"),
    ({"hedge_percentile": "p95"}, "hedge_percentile must be a number"),
])
def test_bad_keys_are_refused(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(resilience=policy)


# --- hedging ------------------------------------------------------------------------------------

def candidate(provider: str) -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(public_model="m", upstream_model="u", input_per_1k="1", output_per_1k="1",
                                    endpoint=route_pb2.Endpoint(provider=provider, kind="openai"))


class Publisher:
    def __init__(self) -> None:
        self.events: list[ev.UsageEvent] = []

    async def publish(self, event: ev.UsageEvent) -> None:
        self.events.append(event)


async def nothing() -> AsyncIterator[adapter_pb.ChatResponse]:
    return
    yield


class Attempts:
    """Opens attempts after a scripted delay, or fails them; records what was closed."""

    def __init__(self, delays: dict[str, float], errors: dict[str, GatewayError] | None = None) -> None:
        self.delays, self.errors = delays, errors or {}
        self.closed: list[str] = []
        self.cancelled: list[str] = []
        self.calls = 0
        self.hedge_started = asyncio.Event()  # set when the second attempt starts

    async def __call__(self, which: route_pb2.RouteCandidate) -> Opened:
        name = which.endpoint.provider
        self.calls += 1
        if self.calls == 2:
            self.hedge_started.set()
        try:
            await asyncio.sleep(self.delays[name])
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        if name in self.errors:
            raise self.errors[name]
        stack = contextlib.AsyncExitStack()
        stack.callback(self.closed.append, name)
        held = [adapter_pb.ChatResponse(body=name.encode())]
        return Opened(which, nothing(), held, stack, time.monotonic())


async def run(attempts: Attempts, hedge_ms: int = 50) -> tuple[Opened, RequestRecord, Publisher]:
    publisher = Publisher()
    recorder = UsageRecorder(publisher)
    record = RequestRecord(request_id="r1", endpoint="chat.completions", public_model="m", stream=True,
                           organization_id="org", attempts=1)
    record.prompt_bytes = 400
    opened = await hedged(candidate("a"), candidate("b"), attempts, hedge_ms, record, recorder)
    await recorder.drain()
    return opened, record, publisher


def hedges(outcome: str) -> float:
    return REGISTRY.get_sample_value("aggregator_hedges_total", {"outcome": outcome}) or 0.0


async def test_the_hedge_wins_when_the_first_stalls_and_the_loser_is_billed_apart() -> None:
    attempts = Attempts({"a": 5.0, "b": 0.0})
    started = time.monotonic()
    before = hedges("hedge")
    opened, record, publisher = await run(attempts)
    assert hedges("hedge") == before + 1
    assert time.monotonic() - started < 2.0  # not the 5 s stall
    assert opened.candidate.endpoint.provider == "b" and record.attempts == 2
    assert attempts.cancelled == ["a"]
    [loser] = publisher.events
    assert (loser.request_id, loser.provider, loser.status) == ("r1.hedge", "a", ev.REQUEST_STATUS_CANCELLED)
    assert loser.prompt_tokens == 100 and loser.cost_usd != "0"  # the prompt the provider consumed


async def test_no_hedge_when_the_first_answers_in_time() -> None:
    attempts = Attempts({"a": 0.0, "b": 0.0})
    opened, record, publisher = await run(attempts, hedge_ms=2000)
    assert opened.candidate.endpoint.provider == "a" and record.attempts == 1 and not publisher.events


async def test_the_first_wins_if_it_answers_before_the_hedge() -> None:
    attempts = Attempts({"a": 0.2, "b": 5.0})
    opened, _, publisher = await run(attempts, hedge_ms=20)
    assert opened.candidate.endpoint.provider == "a"
    assert attempts.cancelled == ["b"] and publisher.events[0].provider == "b"


async def test_both_failing_is_hedge_failed() -> None:
    down = GatewayError(Reason.UPSTREAM_UNAVAILABLE, "down")
    with pytest.raises(HedgeFailed):
        await run(Attempts({"a": 0.1, "b": 0.0}, {"a": down, "b": down}), hedge_ms=20)


async def test_a_first_failing_before_the_hedge_is_raised_as_is() -> None:
    down = GatewayError(Reason.UPSTREAM_UNAVAILABLE, "down")
    with pytest.raises(GatewayError) as info:
        await run(Attempts({"a": 0.0, "b": 0.0}, {"a": down}), hedge_ms=2000)
    assert info.value is down


# --- Envoy's route timeout -------------------------------------------------------------------------

def _route_timeouts(bootstrap: dict[str, Any]) -> set[str]:
    listener = bootstrap["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return {route["route"]["timeout"] for host in manager["route_config"]["virtual_hosts"]
            for route in host["routes"] if "route" in route}


@pytest.mark.parametrize(("deadline_s", "timeout"), [(600, "605s"), (1.5, "7s"), (0, "0s")])
def test_envoys_route_timeout_follows_the_longest_deadline(deadline_s: float, timeout: str) -> None:
    bootstrap = render_bootstrap(http_port=1, admin_port=2, upstreams=[("127.0.0.1", 3)],
                                 descriptor_path=DEFAULT_DESCRIPTOR_PATH, lua_path=DEFAULT_LUA_PATH,
                                 route_timeout_s=deadline_s)
    assert _route_timeouts(bootstrap) == {timeout}  # the edge's own 504 comes first


async def test_a_client_leaving_during_a_hedge_bills_the_hedge_apart() -> None:
    publisher = Publisher()
    recorder = UsageRecorder(publisher)
    record = RequestRecord(request_id="r2", endpoint="chat.completions", public_model="m", stream=True,
                           organization_id="org", attempts=1)
    attempts = Attempts({"a": 5.0, "b": 5.0})
    task = asyncio.ensure_future(hedged(candidate("a"), candidate("b"), attempts, 10, record, recorder))
    await asyncio.wait_for(attempts.hedge_started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await recorder.drain()
    assert sorted(attempts.cancelled) == ["a", "b"]
    assert [(e.request_id, e.provider) for e in publisher.events] == [("r2.hedge", "b")]
