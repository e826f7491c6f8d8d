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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core.errors import GatewayError, Reason
from services.core.money import decimal_str
from services.limits import scripts
from services.limits.budgets import HOLD_S
from services.limits.scripts import TAG

if TYPE_CHECKING:
    from services.limits.budgets import Budget, SpendStore

log = logging.getLogger(__name__)

STEPS = 60
REQUESTS, TOKENS, COST = "requests", "tokens", "cost"
WINDOW_NAMES = {60: "minute", 3600: "hour", 86400: "day"}

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
    # Budgets: what each holds for this request (micro-USD) and the generation of its hash.
    budgets: Sequence[Budget] = ()
    holds: Sequence[int] = ()
    generations: list[str] = field(default_factory=list)
    request_id: str = ""

    def member(self, index: int) -> str:
        return hold_member(self.request_id, self.budgets[index], self.holds[index])

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


def hold_member(request_id: str, budget: Budget, hold: int) -> str:
    """A hold as its budget's sorted set names it (the reconciler parses it back)."""
    return f"{request_id}:{budget.unit}:{hold}"


def _seconds(ms: int) -> int:
    return max(1, -(-ms // 1000))


class Limiter:
    """Admits requests against their windows and budgets; one Redis round trip each."""

    def __init__(self, redis: aioredis.Redis, *, fail_open: bool = True, spend: SpendStore | None = None,
                 budgets_fail_open: bool = False) -> None:
        self._admit = redis.register_script(scripts.ADMIT)
        self._seed = redis.register_script(scripts.SEED)
        self._release = redis.register_script(scripts.RELEASE)
        self._settle = redis.register_script(scripts.SETTLE)
        self._fail_open = fail_open
        self._budgets_fail_open = budgets_fail_open
        self._spend = spend
        self._pending: set[asyncio.Task[None]] = set()
        # (window key, bucket length ms, bucket) -> correction not sent yet
        self._corrections: dict[tuple[str, int, int], int] = {}
        # budget holds to release: (admission, index, true cost in USD, tokens)
        self._releases: list[tuple[Admission, int, Decimal, int]] = []
        self._flush_at: asyncio.TimerHandle | None = None

    async def admit(self, windows: Sequence[Window], amounts: Sequence[int], budgets: Sequence[Budget] = (),
                    holds: Sequence[int] = (), request_id: str = "") -> Admission:
        """Counts the request in every window and holds its worst case in every budget, or raises
        RATE_LIMITED (429 with Retry-After) naming the first window it would overflow, or
        QUOTA_EXCEEDED (429 insufficient_quota) naming the budget, counting nothing. While Redis is
        unreachable the request passes uncounted (`fail_open`, the default for rate limits) or is
        refused with 503 (the default when a budget applies: it must never be overspent)."""
        if not windows and not budgets:
            return Admission()
        args: list[Any] = [len(windows)]
        for window, amount in zip(windows, amounts, strict=True):
            args += [window.limit, window.window_s * 1000, max(amount, 0)]
        args.append(len(budgets))
        for budget, hold in zip(budgets, holds, strict=True):
            args += [budget.limit, hold, HOLD_S * 1000, hold_member(request_id, budget, hold), budget.ttl_s]
        keys = [w.key for w in windows] + [k for b in budgets for k in (b.key, b.holds)]
        if budgets:
            keys.append(scripts.EXPIRED)
        try:
            for _ in range(3):  # a budget hash missing is seeded, then the request admitted
                answer = await self._admit(keys=keys, args=args)
                values = [v if isinstance(v, bytes) else int(v) for v in answer]
                if values[0] != 2:
                    break
                await self._seed_budget(budgets[int(values[1]) - 1])
        except RedisError as exc:
            if (self._budgets_fail_open if budgets else self._fail_open):
                log.warning("limits not checked, Redis unavailable (%s): failing open", type(exc).__name__)
                return Admission()
            raise GatewayError(Reason.UNAVAILABLE,
                               "Limits cannot be checked right now. Please retry.") from exc
        if values[0] == 0:
            index = int(values[2]) - 1
            raise over_limit(windows[index], amounts[index], int(values[3]), int(values[4]))
        if values[0] == 3:
            index = int(values[1]) - 1
            raise over_budget(budgets[index], int(values[2]), holds[index])
        if values[0] != 1:
            raise GatewayError(Reason.UNAVAILABLE, "Limits cannot be checked right now. Please retry.")
        counted = [int(v) for v in values[2:2 + 2 * len(windows)]]
        generations = [v.decode() if isinstance(v, bytes) else str(v) for v in values[2 + 2 * len(windows):]]
        return Admission(windows, list(amounts), counted[0::2], counted[1::2], int(values[1]), budgets,
                         list(holds), generations, request_id)

    async def _seed_budget(self, budget: Budget) -> None:
        if self._spend is None:
            raise RedisError("no spend store to seed a budget from")
        spent = await self._spend.spent(budget)
        await self._seed(keys=[budget.key], args=[spent, uuid.uuid4().hex, budget.ttl_s])

    def settle_soon(self, admission: Admission, actual: dict[str, int], cost: Decimal = Decimal(0),
                    tokens: int = 0) -> None:
        """Corrects estimated windows to the true amounts (`actual` by kind) and releases the
        request's budget holds, spending its true `cost`. Gathered for SETTLE_EVERY_S and sent
        together: never on a request's path, and one round trip for many requests."""
        for window, amount in zip(admission.windows, admission.amounts, strict=True):
            if window.kind in actual and actual[window.kind] != amount:
                step = window.window_s * 1000 // STEPS
                bucket = (window.key, step, admission.admitted_ms // step)
                self._corrections[bucket] = self._corrections.get(bucket, 0) + actual[window.kind] - amount
        for index in range(len(admission.generations)):
            self._releases.append((admission, index, cost, tokens))
        if (self._corrections or self._releases) and self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(SETTLE_EVERY_S, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_at = None
        task = asyncio.get_running_loop().create_task(self._flush())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _flush(self) -> None:
        corrections, self._corrections = self._corrections, {}
        releases, self._releases = self._releases, []
        if releases:
            await self._release_holds(releases)
        entries = [(key, step, bucket, delta) for (key, step, bucket), delta in corrections.items() if delta]
        if not entries:
            return
        try:
            await self._settle(keys=[e[0] for e in entries], args=[v for e in entries for v in e[1:]])
        except RedisError as exc:
            log.warning("%d rate-limit corrections lost, Redis unavailable (%s)", len(entries),
                        type(exc).__name__)

    async def _release_holds(self, releases: list[tuple[Admission, int, Decimal, int]]) -> None:
        """Spend goes to PostgreSQL first, then the holds are released in Redis: a Redis lost in
        between is re-seeded with it (counted twice in that race: more, never less)."""
        if self._spend is not None:
            settled = {id(a): (a.budgets, cost, tokens) for a, _, cost, tokens in releases}
            try:
                await self._spend.add(list(settled.values()))
            except Exception:  # noqa: BLE001 - Redis still has it until the period ends
                log.exception("spend of %d requests not persisted", len(settled))
        keys: list[str] = []
        args: list[Any] = []
        for admission, index, cost, tokens in releases:
            budget = admission.budgets[index]
            keys += [budget.key, budget.holds]
            args += [admission.generations[index], admission.member(index), admission.holds[index],
                     budget.amount(cost, tokens)]
        keys.append(scripts.EXPIRED)
        try:
            await self._release(keys=keys, args=args)
        except RedisError as exc:
            log.warning("%d budget holds not released, Redis unavailable (%s); they expire", len(releases),
                        type(exc).__name__)

    async def drain(self) -> None:
        """Sends the corrections and releases still gathered (graceful stop)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        await self._flush()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def over_budget(budget: Budget, used: int, hold: int) -> GatewayError:
    """429 insufficient_quota naming the budget (no Retry-After: it frees up only as requests in
    flight settle, or when the period ends)."""
    return GatewayError(Reason.QUOTA_EXCEEDED, f"Budget exceeded: {budget.label}. ${_usd(used)} is spent or "
                        f"held by requests in flight, and this request may cost up to ${_usd(hold)}.")


def _usd(micro_usd: int) -> str:
    return decimal_str(Decimal(micro_usd) / 1_000_000)


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
