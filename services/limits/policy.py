"""Which windows a request is counted in (docs/limits.md): the key's own limits (its
`rate_limit_per_minute`, `_per_hour`, `_per_day` and `tokens_per_minute` columns), and the
rate-limit rules that apply to it, each turned into the Limiter's windows with the amount this
request counts in it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.limits.limiter import COST, REQUESTS, TOKENS, WINDOW_NAMES, Window

MICRO = Decimal(1_000_000)  # cost windows count micro-dollars: integers, exact
_KEY_COLUMNS = (("rate_limit_per_minute", 60), ("rate_limit_per_hour", 3600), ("rate_limit_per_day", 86400))
_SCOPE_WORDS = {"key": "this API key", "user": "this user", "organization": "this organization",
                "model": "this model", "global": "the gateway"}


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a request is counted as before it runs: tokens (prompt estimate plus the most it may
    generate) and cost (micro-USD, at the first candidate's price)."""

    tokens: int
    cost_micro: int

    def amount(self, kind: str) -> int:
        return 1 if kind == REQUESTS else self.tokens if kind == TOKENS else self.cost_micro


def estimate(prompt_chars: int, max_output_tokens: int, input_per_1k: str = "0",
             output_per_1k: str = "0") -> Estimate:
    """A request's estimate from the size of its prompt (4 characters a token) and its output limit."""
    prompt = math.ceil(prompt_chars / 4)
    cost = (Decimal(prompt) * Decimal(input_per_1k or "0")
            + Decimal(max_output_tokens) * Decimal(output_per_1k or "0")) / 1000
    return Estimate(prompt + max_output_tokens, math.ceil(cost * MICRO))


def micro_usd(value: Decimal) -> int:
    return math.ceil(value * MICRO)


def key_windows(principal: Any) -> list[Window]:
    """The limits stored on the caller's key (a people's access token has none)."""
    if not principal.api_key_id:
        return []
    windows = [Window.of("key", principal.api_key_id, None, REQUESTS, getattr(principal, column), seconds,
                         f"requests per {WINDOW_NAMES[seconds]} of this API key")
               for column, seconds in _KEY_COLUMNS if principal.HasField(column)]
    if principal.HasField("tokens_per_minute"):
        windows.append(Window.of("key", principal.api_key_id, None, TOKENS, principal.tokens_per_minute, 60,
                                 "tokens per minute of this API key"))
    return windows


def rule_windows(specs: Iterable[Any]) -> list[Window]:
    """The windows of rate-limit rules (services/limits/rules.py `LimitSpec`s)."""
    windows = []
    for spec in specs:
        whose = _SCOPE_WORDS.get(spec.scope, spec.scope)
        about = f" on {spec.model}" if spec.model else ""
        period = WINDOW_NAMES.get(spec.window_s, f"{spec.window_s} s")
        for kind, limit in ((REQUESTS, spec.max_requests), (TOKENS, spec.max_tokens),
                            (COST, None if spec.max_cost_usd is None else micro_usd(spec.max_cost_usd))):
            if limit is not None:
                windows.append(Window.of(spec.scope, spec.target, spec.model, kind, limit, spec.window_s,
                                         f"{kind} per {period} of {whose}{about} (rule {spec.rule_id})"))
    return windows
