"""Route health shared by every process: circuit breakers and measured figures in Redis
(docs/routing.md §4, §5).

One hash per provider endpoint (provider name + base URL) holds its consecutive failures `f`, the
instant its breaker's pause ends `ou` (epoch ms; absent: closed), and moving estimates of its time to
first token `ttft` (s), tokens per second `tps` and error rate `err` over `n` samples. Any process
(edge, routing, another replica) reads and writes it:

- `failed` (a retriable failure before the first event) is one script call: it counts the failure and
  opens the breaker at `failure_threshold` in a row;
- `succeeded` writes only when this process last saw the endpoint failing or open;
- `record` (an attempt's end) is buffered and flushed by one pipelined write a second, which blends
  the figures, counts failures after the first byte, and opens the breaker on a high error rate;
- `snapshot` reads the endpoints' hashes in one round trip, cached in process for `cache_seconds`;
- the same flush and snapshot pipelines write and read each endpoint's distribution of times to
  first token (ttft_distribution.py), from which hedging reads a percentile (docs/resilience.md §4);
- `admit` (half-open, the pause over) lets exactly one request try: the first `SET NX PX` wins the
  trial; the others keep the endpoint behind the healthy candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from aggregator.routing.v1 import route_pb2
from services.core import telemetry
from services.core.config import Breakers
from services.routing import ttft_distribution as dist

log = logging.getLogger(__name__)
# Redis away: health is advice, never a reason to fail a request (docs/routing.md §5).
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
PREFIX = "routing:health:"
TRIAL_PREFIX = "routing:trial:"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# KEYS: health, trial. ARGV: threshold, open_until_ms, ttl_ms. Returns {failures, open_until or -1}.
_FAIL = """
local f = redis.call('HINCRBY', KEYS[1], 'f', 1)
if f >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'ou', ARGV[2])
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {f, tonumber(redis.call('HGET', KEYS[1], 'ou') or '-1')}
"""
# KEYS: health, trial. A success closes the breaker; after an open one the error rate starts afresh.
_SUCCEED = """
if redis.call('HEXISTS', KEYS[1], 'ou') == 1 then
  redis.call('HDEL', KEYS[1], 'ou')
  redis.call('HSET', KEYS[1], 'err', '0', 'n', '0')
end
redis.call('HSET', KEYS[1], 'f', '0')
redis.call('DEL', KEYS[2])
return 1
"""
# KEYS: health, trial. ARGV: now_ms, trial_ms. 1: the caller may send (closed, or it won the trial).
_ADMIT = """
local ou = redis.call('HGET', KEYS[1], 'ou')
if not ou then return 1 end
if tonumber(ou) > tonumber(ARGV[1]) then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# KEYS: health, trial. ARGV: samples, errors, ttft mean or '', tps mean or '', alpha, late failures,
# threshold, open_until_ms, ttl_ms, error-rate threshold, minimum samples, now_ms.
_FLUSH = """
local n = tonumber(ARGV[1])
local keep = (1 - tonumber(ARGV[5])) ^ n
local function blend(name, value)
  local old = redis.call('HGET', KEYS[1], name)
  if old then value = tonumber(old) * keep + tonumber(value) * (1 - keep) end
  redis.call('HSET', KEYS[1], name, tostring(value))
end
blend('err', tonumber(ARGV[2]) / n)
if ARGV[3] ~= '' then blend('ttft', ARGV[3]) end
if ARGV[4] ~= '' then blend('tps', ARGV[4]) end
local total = redis.call('HINCRBY', KEYS[1], 'n', n)
local f = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
if tonumber(ARGV[6]) > 0 then f = redis.call('HINCRBY', KEYS[1], 'f', ARGV[6]) end
local ou = redis.call('HGET', KEYS[1], 'ou')
local failing = tonumber(ARGV[6]) > 0 and f >= tonumber(ARGV[7])
local err = tonumber(redis.call('HGET', KEYS[1], 'err'))
local erring = total >= tonumber(ARGV[11]) and err >= tonumber(ARGV[10])
if (failing and (not ou or tonumber(ou) <= tonumber(ARGV[12]))) or (erring and not ou) then
  redis.call('HSET', KEYS[1], 'ou', ARGV[8])
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return 1
"""


def endpoint_key(endpoint: route_pb2.Endpoint) -> str:
    """The breaker's unit: a provider endpoint (name + base URL), whatever model it serves."""
    return f"{endpoint.provider}|{endpoint.base_url}"


def endpoint_id(candidate: route_pb2.RouteCandidate) -> str:
    """The breaker's unit of a candidate (endpoint_key of its endpoint)."""
    return endpoint_key(candidate.endpoint)


@dataclass(frozen=True, slots=True)
class Health:
    """One endpoint's breaker and figures as last read; the defaults are an unmeasured endpoint."""

    circuit: str = CLOSED
    failures: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    error_rate: float | None = None
    samples: int = 0
    # The distribution of times to first token over the current and previous window: counts per
    # bucket (ttft_distribution.py; () when none), and its p95 once it has MIN_SAMPLES.
    ttft_counts: tuple[int, ...] = ()
    ttft_p95_s: float | None = None

    def ttft_percentile_s(self, p: float) -> float | None:
        """The observed p-th percentile of the time to first token, in seconds; None with fewer
        than MIN_SAMPLES in the windows (docs/routing.md §4)."""
        if sum(self.ttft_counts) < dist.MIN_SAMPLES:
            return None
        return dist.percentile(self.ttft_counts, p)


def _float(raw: dict[str, str], name: str) -> float | None:
    value = raw.get(name)
    return float(value) if value not in (None, "") else None


def parse(raw: dict[str, str], now_ms: int, ttft_windows: Iterable[dict[str, str]] = ()) -> Health:
    """A Health from its Redis hash and its windows of ttft counts (decoded strings)."""
    open_until = raw.get("ou")
    circuit = CLOSED if open_until is None else OPEN if int(float(open_until)) > now_ms else HALF_OPEN
    health = Health(circuit, int(raw.get("f") or 0), _float(raw, "ttft"), _float(raw, "tps"),
                    _float(raw, "err"), int(raw.get("n") or 0), dist.merged(ttft_windows))
    return dataclasses.replace(health, ttft_p95_s=health.ttft_percentile_s(95))


@dataclass(slots=True)
class _Batch:
    """Outcomes of one endpoint since the last flush."""

    samples: int = 0
    errors: int = 0
    late_failures: int = 0  # failures after the first byte: `failed` never saw them
    ttfts: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    provider: str = ""


class RouteHealth:
    """Breakers and figures of every provider endpoint, on one Redis shared by all processes."""

    def __init__(self, redis: Any, *, failure_threshold: int = 3, open_seconds: float = 30.0,
                 trial_seconds: float = 60.0, error_rate_threshold: float = 0.5, min_samples: int = 20,
                 alpha: float = 0.1, cache_seconds: float = 1.0, flush_seconds: float = 1.0,
                 ttl_seconds: float = 86400.0, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._threshold = failure_threshold
        self._open_ms = int(open_seconds * 1000)
        self._trial_ms = int(trial_seconds * 1000)
        self._error_rate = error_rate_threshold
        self._min_samples = min_samples
        self._alpha = alpha
        self._cache_s = cache_seconds
        self._flush_s = flush_seconds
        self._ttl_ms = int(ttl_seconds * 1000)
        self._clock = clock
        self._cache: dict[str, tuple[float, Health]] = {}  # endpoint -> (read at, health)
        self._batches: dict[str, _Batch] = {}
        self._flusher: asyncio.Task[None] | None = None

    ttft_window_s = dist.WINDOW_S  # the ttft distribution's window (tests shorten it)

    @classmethod
    def configured(cls, redis: Any, breakers: Breakers) -> RouteHealth:
        """The breakers of the config's `breakers` section (docs/reference.md §3)."""
        return cls(redis, failure_threshold=breakers.failure_threshold, open_seconds=breakers.open_s,
                   error_rate_threshold=breakers.error_rate, min_samples=breakers.min_samples)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _keys(self, endpoint: str) -> list[str]:
        return [PREFIX + endpoint, TRIAL_PREFIX + endpoint]

    def _remember(self, endpoint: str, health: Health) -> None:
        self._cache[endpoint] = (self._clock(), health)
        provider = endpoint.split("|", 1)[0]
        telemetry.PROVIDER_OPEN.labels(provider).set(1 if health.circuit != CLOSED else 0)

    async def snapshot(self, endpoints: Iterable[str]) -> dict[str, Health]:
        """The endpoints' health, read in one round trip for those not read in the last
        `cache_seconds` (docs/routing.md §4: the hot path's only Redis read)."""
        now = self._clock()
        wanted = list(dict.fromkeys(endpoints))
        found = {e: self._cache[e][1] for e in wanted
                 if e in self._cache and now - self._cache[e][0] < self._cache_s}
        stale = [e for e in wanted if e not in found]
        if stale:
            try:
                window = dist.window(now, self.ttft_window_s)
                async with self._redis.pipeline(transaction=False) as pipe:
                    for endpoint in stale:  # the hash, then the current and previous ttft windows
                        pipe.hgetall(PREFIX + endpoint)
                        pipe.hgetall(dist.key(endpoint, window))
                        pipe.hgetall(dist.key(endpoint, window - 1))
                    rows = await pipe.execute()
            except REDIS_ERRORS:
                # Health is advice: without Redis, route as last known (or as configured) for a second.
                log.warning("route health: Redis unavailable; routing on the last known state")
                for endpoint in stale:
                    found[endpoint] = self._cache.get(endpoint, (now, Health()))[1]
                    self._cache[endpoint] = (now, found[endpoint])
            else:
                now_ms = self._now_ms()
                for i, endpoint in enumerate(stale):
                    raw, current, previous = (_decoded(r) for r in rows[3 * i:3 * i + 3])
                    found[endpoint] = parse(raw, now_ms, (current, previous))
                    self._remember(endpoint, found[endpoint])
        # Built from what was read, not from the cache: a flush while Redis answered may have
        # marked an entry stale since (what it wrote is read afresh).
        return {e: found[e] for e in wanted}

    def known(self, endpoint: str) -> Health | None:
        """The endpoint's health as last read or written by this process, however old; no Redis.
        The edge takes its hedging threshold from it right after `order` read it
        (docs/resilience.md §4), so the threshold costs no round trip."""
        entry = self._cache.get(endpoint)
        return entry[1] if entry is not None else None

    async def admit(self, endpoint: str) -> bool:
        """Whether a request may send to a half-open endpoint: exactly one wins the trial (none
        while Redis is away)."""
        return bool(await self._eval(_ADMIT, endpoint, self._now_ms(), self._trial_ms))

    async def _eval(self, script: str, endpoint: str, *args: Any) -> Any:
        """One script call on an endpoint's keys; None (logged) while Redis is away."""
        try:
            return await self._redis.eval(script, 2, *self._keys(endpoint), *args)
        except REDIS_ERRORS:
            log.warning("route health: Redis unavailable; %s not updated", endpoint.split("|", 1)[0])
            return None

    async def order(self, candidates: list[route_pb2.RouteCandidate]) -> list[route_pb2.RouteCandidate]:
        """The candidates with closed breakers (and a won half-open trial) first, the others after
        them as a last resort, each group in the given order."""
        health = await self.snapshot(endpoint_id(c) for c in candidates)
        if all(h.circuit == CLOSED for h in health.values()):
            return candidates
        first: list[route_pb2.RouteCandidate] = []
        last: list[route_pb2.RouteCandidate] = []
        admitted: dict[str, bool] = {}
        for candidate in candidates:
            endpoint = endpoint_id(candidate)
            circuit = health[endpoint].circuit
            if circuit == HALF_OPEN and endpoint not in admitted:
                admitted[endpoint] = await self.admit(endpoint)
                if not admitted[endpoint]:  # another request holds the trial: open, until the next read
                    read_at, h = self._cache[endpoint]
                    self._cache[endpoint] = (read_at, dataclasses.replace(h, circuit=OPEN))
            ok = circuit == CLOSED or (circuit == HALF_OPEN and admitted[endpoint])
            (first if ok else last).append(candidate)
        return first + last

    async def failed(self, candidate: route_pb2.RouteCandidate) -> None:
        """A retriable failure before the first event: counted now, in one script call."""
        await self.endpoint_failed(endpoint_id(candidate))

    async def endpoint_failed(self, endpoint: str) -> None:
        """A failure of `endpoint` (a request's, or an active probe's: docs/routing.md §5), counted
        by the same script: `failure_threshold` in a row open the breaker."""
        open_until_ms = self._now_ms() + self._open_ms
        answer = await self._eval(_FAIL, endpoint, self._threshold, open_until_ms, self._ttl_ms)
        if answer is None:
            return
        failures, open_until = answer
        known = self._cache.get(endpoint, (0.0, Health()))[1]
        circuit = CLOSED if int(open_until) < 0 else OPEN if int(open_until) > self._now_ms() else HALF_OPEN
        self._remember(endpoint, dataclasses.replace(known, circuit=circuit, failures=int(failures)))

    async def succeeded(self, candidate: route_pb2.RouteCandidate) -> None:
        """The first event arrived: closes the breaker, written only when this process last saw the
        endpoint failing (no write on a healthy hot path)."""
        endpoint = endpoint_id(candidate)
        known = self._cache.get(endpoint)
        if known is None:
            return
        read_at, health = known
        batch = self._batches.get(endpoint)
        # Skipped only on fresh knowledge of a healthy endpoint with no failure waiting to be
        # flushed: a breaker opened since (by another process, or by this one's flush) is closed.
        if (health.failures == 0 and health.circuit == CLOSED and self._clock() - read_at < self._cache_s
                and (batch is None or batch.errors == 0)):
            return
        await self._close(endpoint)

    async def _close(self, endpoint: str) -> None:
        """Closes the endpoint's breaker in Redis (one script call) and in this process's view."""
        if await self._eval(_SUCCEED, endpoint) is None:
            return
        known = self._cache.get(endpoint, (0.0, Health()))[1]
        self._remember(endpoint, dataclasses.replace(known, circuit=CLOSED, failures=0))

    async def probe_succeeded(self, endpoint: str) -> None:
        """An active probe's 2xx (docs/routing.md §5): closes an open or half-open breaker at once
        and ends a run of failures, written always (one write per endpoint and interval across all
        processes, since only one process probes)."""
        await self._close(endpoint)

    def record(self, candidate: route_pb2.RouteCandidate, *, ok: bool, ttft_s: float | None,
               output_tokens: int, duration_s: float) -> None:
        """An attempt's outcome, buffered for the next flush. A failure with a first token
        (`ttft_s` set) failed after the first byte: it counts towards the consecutive failures,
        which `failed` counted already for the others."""
        endpoint = endpoint_id(candidate)
        batch = self._batches.setdefault(endpoint, _Batch(provider=candidate.endpoint.provider))
        batch.samples += 1
        if not ok:
            batch.errors += 1
            if ttft_s is not None:
                batch.late_failures += 1
        if ttft_s is not None:
            batch.ttfts.append(ttft_s)
            generating = duration_s - ttft_s
            if ok and output_tokens > 1 and generating > 0:
                batch.rates.append((output_tokens - 1) / generating)
        if self._flusher is None or self._flusher.done():
            with contextlib.suppress(RuntimeError):  # no running loop: flushed by the next `flush`
                self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)
        try:
            await self.flush()
        except Exception:  # figures are advisory: a Redis hiccup loses one second of them
            log.warning("route health: flush failed", exc_info=True)

    async def flush(self) -> None:
        """Writes the buffered outcomes: one pipelined round trip for every endpoint."""
        batches, self._batches = self._batches, {}
        if not batches:
            return
        now_ms = self._now_ms()
        now = now_ms / 1000.0
        window, window_ttl_ms = dist.window(now, self.ttft_window_s), dist.ttl_ms(now, self.ttft_window_s)
        async with self._redis.pipeline(transaction=False) as pipe:
            for endpoint, b in batches.items():
                if b.ttfts:  # the distribution's counts, in the same round trip (docs/routing.md §4)
                    counts = dist.key(endpoint, window)
                    for index, count in dist.tally(b.ttfts).items():
                        pipe.hincrby(counts, str(index), count)
                    pipe.pexpire(counts, window_ttl_ms)
                ttft = str(sum(b.ttfts) / len(b.ttfts)) if b.ttfts else ""
                rate = str(sum(b.rates) / len(b.rates)) if b.rates else ""
                pipe.eval(_FLUSH, 2, *self._keys(endpoint), b.samples, b.errors, ttft, rate, self._alpha,
                          b.late_failures, self._threshold, now_ms + self._open_ms, self._ttl_ms,
                          self._error_rate, self._min_samples, now_ms)
            await pipe.execute()
        for endpoint in batches:  # read afresh next time; kept as the last known meanwhile (`known`)
            if endpoint in self._cache:
                self._cache[endpoint] = (-math.inf, self._cache[endpoint][1])

    async def close(self) -> None:
        """Flushes what is buffered."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(Exception):
            await self.flush()


def _decoded(raw: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}
