"""Resilience through Envoy with the official SDK (docs/resilience.md): failover until the first
content, retries and Retry-After, first-token and request deadlines, hedging, the attempts and
provider headers, and the `stream_options` quirk. Fake providers fail over real HTTP; timeouts
are small, set per model in the config."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aggregator.events.v1 import usage_event_pb2 as ev
from services.core.config import Breakers, Resilience, StoreUrls
from services.runtime.stores import free_port
from tests.e2e.harness import Gateway, gateway_config, start_gateway
from tests.fakes import openai_failures as failures
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.usage_watch import UsageWatch

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say hello"}]
STALL_S = 2.5  # how long a stalled provider keeps quiet
LONG_STALL_S = 10.0  # one the client never waits for
IDLE_S = 4.0  # the gateway's idle timeout here
PRICE = {"input_per_1k": "0.001", "output_per_1k": "0.002"}


def _model(model_id: str, providers: list[str], **policy: Any) -> dict[str, Any]:
    return {"id": model_id, "type": "chat", "resilience": policy,
            "routes": [{"provider": p, "model": "gpt-4o-mini", **PRICE} for p in providers]}


@pytest.fixture(scope="module")
async def flaky() -> AsyncIterator[FakeOpenAI]:
    """The first candidate of every model here: scripted to fail."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def steady() -> AsyncIterator[FakeOpenAI]:
    """The second candidate: always answers."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def picky() -> AsyncIterator[FakeOpenAI]:
    """An OpenAI-compatible server that refuses `stream_options`."""
    async with FakeOpenAI() as fake:
        fake.rejects_stream_options = True
        yield fake


@pytest.fixture(scope="module", params=["all", "split"])
async def gateway(request: pytest.FixtureRequest, store_urls, flaky: FakeOpenAI, steady: FakeOpenAI,
                  picky: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """The gateway in both topologies: in "split" the adapter is another process, reached with
    the request's deadline as its gRPC deadline."""
    providers = [
        {"name": "flaky", "kind": "openai_compatible", "base_url": flaky.base_url},
        {"name": "steady", "kind": "openai_compatible", "base_url": steady.base_url},
        {"name": "picky", "kind": "openai_compatible", "base_url": picky.base_url, "stream_options": False},
    ]
    both = ["flaky", "steady"]
    models = [
        _model("failover", both, first_token_timeout_s=0.5),
        # Both routes with the default timeouts: the cases that are not about a timeout must not
        # meet one on a busy machine (the split topology's first content can pass 0.5 s there).
        _model("lenient", both),
        _model("retrying", both, retries=2, backoff_initial_s=0.05, max_retry_after_s=1.0),
        _model("hedged", both, hedge_after_ms=300, first_token_timeout_s=30),
        _model("short", ["flaky"], total_timeout_s=1.0),
        _model("patient", ["flaky"], first_token_timeout_s=30),
        {**_model("route-timeout", both, first_token_timeout_s=30),
         "routes": [{"provider": "flaky", "model": "gpt-4o-mini", "first_token_timeout_s": 0.5, **PRICE},
                    {"provider": "steady", "model": "gpt-4o-mini", **PRICE}]},
        _model("picky-chat", ["picky"]),
    ]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    # Silence between two reads: the adapter's (section-level) idle timeout, above STALL_S.
    # Breakers open on consecutive failures only: the error rate of `flaky` (failing on purpose in
    # most tests, in both topologies, on one Redis) would otherwise open it for a later test.
    config = dataclasses.replace(gateway_config(steady.base_url, steady.base_url, dead, providers, models),
                                 resilience=Resilience(idle_timeout_s=IDLE_S),
                                 breakers=Breakers(error_rate=1.0, min_samples=1_000_000))
    data_dir: Path = tmp_path_factory.mktemp(f"gateway-resilience-{request.param}")
    running = await start_gateway(request.param, store_urls, data_dir, config)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def client(gateway: Gateway, flaky: FakeOpenAI, steady: FakeOpenAI,
                 picky: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK, with the fakes reset and `flaky` healthy again: one success closes its circuit
    breaker (edge/health.py), which earlier tests' failures may have opened."""
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.admin_key,
                                  max_retries=0, timeout=30) as sdk:
        for fake in (flaky, steady, picky):
            fake.reset()
        await sdk.chat.completions.create(model="short", messages=MESSAGES)
        flaky.requests.clear()
        yield sdk


async def _stream(client: openai.AsyncOpenAI, model: str,
                  headers: dict[str, str] | None = None) -> tuple[httpx.Headers, str, float]:
    """Streams a chat: the response headers, the text, and the seconds to the first content."""
    started = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=True, extra_headers=headers)  # type: ignore[arg-type]
    ttft = None
    text = ""
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft if ttft is not None else time.monotonic() - started
            text += chunk.choices[0].delta.content
    assert ttft is not None
    return raw.headers, text, ttft


def _served(headers: httpx.Headers, provider: str, attempts: int) -> None:
    assert headers["x-aggregator-provider"] == provider
    assert headers["x-aggregator-attempts"] == str(attempts)


@pytest.mark.parametrize("failure", [failures.in_stream(after_chunks=1), failures.dropped(after_chunks=1)],
                         ids=["error-event", "connection-cut"])
async def test_a_death_after_the_role_chunk_fails_over_invisibly(
        client: openai.AsyncOpenAI, flaky: FakeOpenAI, steady: FakeOpenAI, failure: Any) -> None:
    flaky.fail_next(failure)
    headers, text, _ = await _stream(client, "lenient")
    _served(headers, "steady", 2)
    assert text and len(flaky.requests) == 1 and len(steady.requests) == 1


@pytest.mark.parametrize("failure", [
    failures.server_error(409), failures.timeout(408), failures.server_error(500), failures.unavailable(),
    failures.overloaded(), failures.rate_limited(retry_after_s=30),
], ids=["409", "408", "500", "503", "529", "429"])
async def test_retriable_statuses_move_to_the_next_candidate(
        client: openai.AsyncOpenAI, flaky: FakeOpenAI, failure: Any) -> None:
    flaky.fail_next(failure)
    raw = await client.chat.completions.with_raw_response.create(model="lenient", messages=MESSAGES)
    _served(raw.headers, "steady", 2)
    assert raw.parse().choices[0].message.content


async def test_a_bad_request_is_not_retried(client: openai.AsyncOpenAI, flaky: FakeOpenAI,
                                            steady: FakeOpenAI) -> None:
    flaky.fail_next(failures.bad_request())
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="retrying", messages=MESSAGES)
    assert len(flaky.requests) == 1 and not steady.requests


async def test_a_retry_waits_out_a_short_retry_after(client: openai.AsyncOpenAI, flaky: FakeOpenAI,
                                                     steady: FakeOpenAI) -> None:
    flaky.fail_next(failures.rate_limited(retry_after_s=1, retry_after_ms=400))
    started = time.monotonic()
    headers, _, _ = await _stream(client, "retrying")
    assert time.monotonic() - started >= 0.4  # Retry-After honoured
    _served(headers, "flaky", 2)
    assert len(flaky.requests) == 2 and not steady.requests


async def test_retries_back_off_then_move_on(client: openai.AsyncOpenAI, flaky: FakeOpenAI) -> None:
    flaky.fail_next(failures.server_error(502), times=3)
    headers, _, _ = await _stream(client, "retrying")
    _served(headers, "steady", 4)  # 1 + 2 retries on flaky, then steady
    assert len(flaky.requests) == 3


async def test_a_retry_after_too_long_moves_to_the_next_candidate(
        client: openai.AsyncOpenAI, flaky: FakeOpenAI) -> None:
    flaky.fail_next(failures.rate_limited(retry_after_s=30))
    started = time.monotonic()
    headers, _, _ = await _stream(client, "retrying")
    assert time.monotonic() - started < 10  # not the 30 s asked
    _served(headers, "steady", 2)
    assert len(flaky.requests) == 1


async def test_a_stall_after_the_role_chunk_times_out_to_the_next_candidate(
        client: openai.AsyncOpenAI, flaky: FakeOpenAI) -> None:
    flaky.hold_streams()  # the role chunk, then nothing
    headers, text, ttft = await _stream(client, "failover")
    _served(headers, "steady", 2)
    assert 0.5 <= ttft < STALL_S * 4 and text
    await flaky.wait_for_disconnect(within_s=10)  # the stalled stream was dropped


async def test_a_routes_own_first_token_timeout_wins_over_its_models(
        client: openai.AsyncOpenAI, flaky: FakeOpenAI) -> None:
    flaky.hold_streams()  # the role chunk, then nothing; the model would wait 30 s, the route 0.5 s
    headers, text, ttft = await _stream(client, "route-timeout")
    _served(headers, "steady", 2)
    assert 0.5 <= ttft < 15 and text


async def test_the_request_deadline_is_a_504(client: openai.AsyncOpenAI, flaky: FakeOpenAI) -> None:
    flaky.first_byte_delay_s = LONG_STALL_S
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="short", messages=MESSAGES, stream=True)
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"  # type: ignore[index]
    assert 1.0 <= time.monotonic() - started < LONG_STALL_S / 2  # the 1 s deadline, not the stall


async def test_the_client_may_shorten_the_deadline(client: openai.AsyncOpenAI, flaky: FakeOpenAI) -> None:
    flaky.first_byte_delay_s = LONG_STALL_S  # "patient" would wait it out (first token 30 s)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="patient", messages=MESSAGES,
                                             extra_headers={"x-aggregator-timeout-ms": "300"})
    assert info.value.status_code == 504 and time.monotonic() - started < LONG_STALL_S / 2
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="patient", messages=MESSAGES,
                                             extra_headers={"x-aggregator-timeout-ms": "soon"})


async def test_hedging_cuts_the_time_to_first_token(client: openai.AsyncOpenAI, flaky: FakeOpenAI,
                                                    store_urls: StoreUrls) -> None:
    flaky.first_byte_delay_s = STALL_S
    headers, _, unhedged = await _stream(client, "hedged", {"x-aggregator-hedge-ms": "0"})
    _served(headers, "flaky", 1)
    assert unhedged >= STALL_S  # without hedging the stall is the client's
    async with UsageWatch(store_urls) as watch:
        headers, _, hedged = await _stream(client, "hedged")
        _served(headers, "steady", 2)
        assert hedged < STALL_S / 2 and hedged < unhedged / 2  # the hedge (300 ms) served instead
        # The loser is billed on its own for the prompt it consumed.
        [loser] = await watch.events_for(headers["x-request-id"] + ".hedge")
        [winner] = await watch.events_for(headers["x-request-id"])
    assert (loser.provider, loser.status) == ("flaky", ev.REQUEST_STATUS_CANCELLED)
    assert loser.prompt_tokens > 0 and Decimal(loser.cost_usd) > 0
    assert (winner.provider, winner.attempts, winner.status) == ("steady", 2, ev.REQUEST_STATUS_SUCCEEDED)


async def test_a_provider_refusing_stream_options_streams(client: openai.AsyncOpenAI,
                                                         picky: FakeOpenAI) -> None:
    headers, text, _ = await _stream(client, "picky-chat")
    _served(headers, "picky", 1)
    assert text and "stream_options" not in picky.requests[0].json


async def test_a_slow_stream_is_not_cut_by_the_first_token_timeout(client: openai.AsyncOpenAI,
                                                                   flaky: FakeOpenAI) -> None:
    flaky.chunk_delay_s = 0.15  # every chunk; the whole stream lasts longer than the 0.5 s limit
    started = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(
        model="failover", messages=[{"role": "user", "content": "one two three four five six seven"}],
        stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert time.monotonic() - started > 0.5 and text == "one two three four five six seven"
    _served(raw.headers, "flaky", 1)


async def _raw_events(gateway: Gateway, model: str) -> tuple[httpx.Headers, list[str]]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                                 headers={"authorization": f"Bearer {gateway.admin_key}"}) as raw:
        body = {"model": model, "messages": MESSAGES, "stream": True}
        async with raw.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            return response.headers, [e for e in (await response.aread()).decode().split("\n\n") if e]


async def test_a_drop_after_the_first_content_is_an_in_band_error(
        gateway: Gateway, client: openai.AsyncOpenAI, flaky: FakeOpenAI) -> None:
    flaky.fail_next(failures.dropped(after_chunks=2))  # the role chunk, one word, then the cut
    headers, events = await _raw_events(gateway, "lenient")
    _served(headers, "flaky", 1)  # the stream belonged to flaky: no failover after content
    assert '"content":"Say"' in events[1].replace(" ", "")
    assert '"error"' in events[-1] and "data: [DONE]" not in events


async def test_silence_mid_stream_ends_it_after_the_idle_timeout(
        gateway: Gateway, client: openai.AsyncOpenAI, flaky: FakeOpenAI) -> None:
    flaky.hold_streams(after=1)  # the role chunk and one word, then nothing
    started = time.monotonic()
    headers, events = await _raw_events(gateway, "lenient")
    assert IDLE_S <= time.monotonic() - started < LONG_STALL_S * 2
    _served(headers, "flaky", 1)
    assert '"upstream_timeout"' in events[-1] and "data: [DONE]" not in events
