"""Rate limits: every window that applies to a request, checked and counted in one Redis round
trip (docs/limits.md).

A window is a Redis hash of 60 sub-buckets (1 s for a minute, 1 min for an hour, 24 min for a
day), field = bucket number, value = what was counted in it. The Lua script below reads every
window of the request, refuses if any would go over its limit (counting nothing then), and
otherwise adds the request to the current bucket of each: one EVALSHA, atomic, with the server's
clock (`TIME`), so every worker and replica shares the same windows. All keys carry the hash tag
`{rl}`: one Cluster slot, so the script may touch them together.

Why this sliding window: a fixed window lets 2N through around its edge; a log of timestamps is
exact but grows with N and cannot count tokens; GCRA paces rather than counting. Sixty buckets cost
a small hash per window, count requests, tokens and cost alike, and let a request count against a
limit for one window after it (to 1/60 of the window), so "N per minute" is never more than N in
any 60 s span, give or take one second.

Token and cost windows are counted with an estimate when the request starts and corrected with the
true amount when it ends (`settle_soon`: gathered and sent in the background, many requests in one
call, never on the request's path).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core.errors import GatewayError, Reason

log = logging.getLogger(__name__)

STEPS = 60
TAG = "{rl}"
REQUESTS, TOKENS, COST = "requests", "tokens", "cost"
WINDOW_NAMES = {60: "minute", 3600: "hour", 86400: "day"}

# KEYS: one hash per window. ARGV: per window, its limit, length (ms) and the amount to count.
# Answers {1, now, used_1, reset_1, ...} (used includes this request) or {0, now, i, used_i, wait_i}
# for the first window i it would overflow (wait -1: the amount alone is over the limit).
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local used, oldest = {}, {}
for i = 1, #KEYS do
  local limit, win, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local step = win / 60
  local cur = math.floor(now / step)
  local fields = redis.call('HGETALL', KEYS[i])
  local sum, buckets, stale = 0, {}, {}
  for j = 1, #fields, 2 do
    local idx, v = tonumber(fields[j]), tonumber(fields[j+1])
    if idx <= cur - 60 then stale[#stale+1] = fields[j] else sum = sum + v; buckets[#buckets+1] = {idx, v} end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  if sum + amount > limit then
    local freed, wait = 0, -1
    for _, b in ipairs(buckets) do
      freed = freed + b[2]
      if sum - freed + amount <= limit then wait = (b[1] + 60) * step - now; break end
    end
    return {0, now, i, sum, wait}
  end
  used[i] = sum
  oldest[i] = cur
  if #buckets > 0 then oldest[i] = buckets[1][1] end
end
local out = {1, now}
for i = 1, #KEYS do
  local win, amount = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local step = win / 60
  local cur = math.floor(now / step)
  if amount > 0 then redis.call('HINCRBY', KEYS[i], cur, amount) end
  redis.call('PEXPIRE', KEYS[i], win + step)
  if amount > 0 and used[i] == 0 then oldest[i] = cur end
  out[#out+1] = used[i] + amount
  out[#out+1] = (oldest[i] + 60) * step - now
end
return out
"""

# KEYS: windows to correct (a key may repeat). ARGV: per key, its bucket length (ms), the bucket
# its request was counted in, and the correction. A bucket that has left its window is not touched.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local step, idx, delta = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  if idx > math.floor(now / step) - 60 then
    local left = redis.call('HINCRBY', KEYS[i], ARGV[3*i-1], delta)
    if left <= 0 then redis.call('HDEL', KEYS[i], ARGV[3*i-1]) end
  end
end
return 1
"""
SETTLE_EVERY_S = 0.2  # corrections are gathered and sent together, at most this late


@dataclass(frozen=True, slots=True)
class Window:
    """One limit as counted: `label` names it to clients ("requests per minute for this key")."""

    key: str
    kind: str  # REQUESTS, TOKENS or COST (micro-dollars)
    limit: int
    window_s: int
    label: str

    @classmethod
    def of(cls, scope: str, target: str, model: str | None, kind: str, limit: int, window_s: int,
           label: str) -> Window:
        return cls(f"{TAG}:{scope}:{target}:{model or '*'}:{window_s}:{kind}", kind, limit, window_s, label)


@dataclass(slots=True)
class Admission:
    """What admitting a request counted: per window, the amount, what is used now (this request
    included) and the milliseconds until the oldest counted bucket leaves the window."""

    windows: Sequence[Window] = ()
    amounts: Sequence[int] = ()
    used: list[int] = field(default_factory=list)
    reset_ms: list[int] = field(default_factory=list)
    admitted_ms: int = 0

    def headers(self) -> tuple[tuple[str, str], ...]:
        """`X-RateLimit-*` for the tightest window (least left, then soonest reset), and OpenAI's
        `x-ratelimit-*-requests` / `-tokens` for the tightest window of each kind."""
        if not self.used:
            return ()
        rows = list(zip(self.windows, self.used, self.reset_ms, strict=True))

        def left(row: tuple[Window, int, int]) -> tuple[float, int]:
            window, used, reset = row
            return (max(window.limit - used, 0) / window.limit, reset)

        tightest = min(rows, key=left)
        window, used, reset = tightest
        out = [("x-ratelimit-limit", str(window.limit)),
               ("x-ratelimit-remaining", str(max(window.limit - used, 0))),
               ("x-ratelimit-reset", str(_seconds(reset))), ("x-ratelimit-window", str(window.window_s))]
        for kind in (REQUESTS, TOKENS):
            of_kind = [row for row in rows if row[0].kind == kind]
            if of_kind:
                window, used, reset = min(of_kind, key=left)
                out += [(f"x-ratelimit-limit-{kind}", str(window.limit)),
                        (f"x-ratelimit-remaining-{kind}", str(max(window.limit - used, 0))),
                        (f"x-ratelimit-reset-{kind}", f"{_seconds(reset)}s")]
        return tuple(out)


def _seconds(ms: int) -> int:
    return max(1, -(-ms // 1000))


class Limiter:
    """Admits requests against their windows; one Redis round trip each."""

    def __init__(self, redis: aioredis.Redis, *, fail_open: bool = True) -> None:
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)
        self._fail_open = fail_open
        self._pending: set[asyncio.Task[None]] = set()
        # (window key, bucket length ms, bucket) -> correction not sent yet
        self._corrections: dict[tuple[str, int, int], int] = {}
        self._flush_at: asyncio.TimerHandle | None = None

    async def admit(self, windows: Sequence[Window], amounts: Sequence[int]) -> Admission:
        """Counts the request in every window, or raises RATE_LIMITED (429 with Retry-After) naming
        the first window it would overflow, counting nothing. While Redis is unreachable the
        request passes uncounted (`fail_open`, the default) or is refused with 503."""
        if not windows:
            return Admission()
        args: list[int] = []
        for window, amount in zip(windows, amounts, strict=True):
            args += [window.limit, window.window_s * 1000, max(amount, 0)]
        try:
            answer = await self._admit(keys=[w.key for w in windows], args=args)
        except RedisError as exc:
            if self._fail_open:
                log.warning("rate limits not checked, Redis unavailable (%s): failing open",
                            type(exc).__name__)
                return Admission()
            raise GatewayError(Reason.UNAVAILABLE,
                               "Rate limits cannot be checked right now. Please retry.") from exc
        values = [int(v) for v in answer]
        if values[0] == 0:
            raise over_limit(windows[values[2] - 1], amounts[values[2] - 1], values[3], values[4])
        return Admission(windows, list(amounts), values[2::2], values[3::2], values[1])

    def settle_soon(self, admission: Admission, actual: dict[str, int]) -> None:
        """Corrects estimated windows to the true amounts (`actual` by kind). Corrections are
        gathered for SETTLE_EVERY_S and sent in one script call: never on a request's path, and
        one round trip for many requests."""
        for window, amount in zip(admission.windows, admission.amounts, strict=True):
            if window.kind in actual and actual[window.kind] != amount:
                step = window.window_s * 1000 // STEPS
                bucket = (window.key, step, admission.admitted_ms // step)
                self._corrections[bucket] = self._corrections.get(bucket, 0) + actual[window.kind] - amount
        if self._corrections and self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(SETTLE_EVERY_S, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_at = None
        task = asyncio.get_running_loop().create_task(self._flush())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _flush(self) -> None:
        corrections, self._corrections = self._corrections, {}
        entries = [(key, step, bucket, delta) for (key, step, bucket), delta in corrections.items() if delta]
        if not entries:
            return
        try:
            await self._settle(keys=[e[0] for e in entries], args=[v for e in entries for v in e[1:]])
        except RedisError as exc:
            log.warning("%d rate-limit corrections lost, Redis unavailable (%s)", len(entries),
                        type(exc).__name__)

    async def drain(self) -> None:
        """Sends the corrections still gathered (graceful stop)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        await self._flush()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def over_limit(window: Window, amount: int, used: int, wait_ms: int) -> GatewayError:
    """429 rate_limit_exceeded naming the limit, with Retry-After (none when the request alone is
    larger than the limit: waiting would not help)."""
    unit = {REQUESTS: "requests", TOKENS: "tokens", COST: "micro-USD"}[window.kind]
    period = WINDOW_NAMES.get(window.window_s, f"{window.window_s} s")
    if wait_ms < 0:
        return GatewayError(Reason.RATE_LIMITED, f"Rate limit reached: this request needs {amount} {unit}, "
                            f"more than the limit of {window.limit} {unit} per {period} ({window.label}).")
    return GatewayError(Reason.RATE_LIMITED, f"Rate limit reached for {window.label}: {window.limit} {unit} "
                        f"per {period}, {used} used. Please try again in {_seconds(wait_ms)}s.",
                        retry_after=wait_ms / 1000)
