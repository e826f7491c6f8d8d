"""The distribution of times to first token per provider endpoint, shared in Redis, from which a
percentile is read (docs/routing.md §4; hedging after it: docs/resilience.md §4).

Times fall into fixed log-spaced buckets: bucket 0 is under 10 ms, bucket i (1..52) covers
[10 ms × 1.2^(i−1), 10 ms × 1.2^i), and the last, 53, everything from 131.5 s up. Each bucket is
20 % wide, so a percentile read from the counts lies in the same bucket as the true one: within
one bucket width (a factor 1.2). Counts are kept per time window (`WINDOW_S`, 5 minutes) in one
Redis hash per endpoint and window, `routing:ttft:<window>:<endpoint>`, field = bucket index; a
percentile is read from the current and the previous window together, so it follows a change
within 5–10 minutes, and a window expires by TTL one window after it stops being read.

Pure functions: `services/routing/health.py` writes the counts in its flush pipeline and reads
them in its snapshot pipeline (no round trip of their own).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

KEY_PREFIX = "routing:ttft:"
LOWEST_S = 0.01  # the lower bound of bucket 1: anything faster is bucket 0
RATIO = 1.2  # each bucket's upper bound over its lower: 20 % wide
TOP = 53  # the last bucket, open-ended: 10 ms × 1.2^52 ≈ 131.5 s and up (above the 120 s default timeout)
BUCKETS = TOP + 1
WINDOW_S = 300.0  # one window of counts; a percentile reads this one and the previous one
MIN_SAMPLES = 20  # fewer samples in the two windows: no percentile (too few to tell a p95)


def bucket(ttft_s: float) -> int:
    """The bucket a time to first token falls in."""
    if ttft_s < LOWEST_S:
        return 0
    index = int(math.floor(math.log(ttft_s / LOWEST_S) / math.log(RATIO))) + 1
    return min(index, TOP)


def bounds(index: int) -> tuple[float, float]:
    """A bucket's lower and upper bound in seconds (the last one's upper bound is infinite)."""
    if index == 0:
        return 0.0, LOWEST_S
    low = LOWEST_S * RATIO ** (index - 1)
    return low, (math.inf if index == TOP else low * RATIO)


def tally(ttfts: Iterable[float]) -> dict[int, int]:
    """Counts per bucket of a batch of times: the flush's increments."""
    return dict(Counter(bucket(t) for t in ttfts))


def window(now_s: float, window_s: float = WINDOW_S) -> int:
    """The number of the window `now_s` (epoch seconds) falls in."""
    return int(now_s // window_s)


def key(endpoint: str, window_no: int) -> str:
    """The Redis hash of an endpoint's counts in one window (the window first: an endpoint id
    holds `|` and `:` of its URL)."""
    return f"{KEY_PREFIX}{window_no}:{endpoint}"


def ttl_ms(now_s: float, window_s: float = WINDOW_S) -> int:
    """How long the current window's hash is kept: until one window after the last moment it is
    read (the end of the next window), the spare window covering clocks that differ between
    processes. Relative (PEXPIRE), so it follows the writer's own clock."""
    expires_s = (window(now_s, window_s) + 3) * window_s
    return max(1, int((expires_s - now_s) * 1000))


def merged(rows: Iterable[Mapping[str, str]]) -> tuple[int, ...]:
    """The counts of several windows' hashes (decoded), added up per bucket; () when empty.
    A field that is not a bucket index is ignored (a hash written by another version)."""
    counts = [0] * BUCKETS
    for row in rows:
        for field, value in row.items():
            if field.isdigit() and int(field) < BUCKETS:
                counts[int(field)] += int(value)
    return tuple(counts) if any(counts) else ()


def percentile(counts: Sequence[int], p: float) -> float | None:
    """The p-th percentile (nearest rank, 0 < p ≤ 100) of the times counted, in seconds; None
    without any count. Interpolated geometrically inside the bucket that holds the rank, so it is
    within that bucket (one bucket width of the true value); the open top bucket answers its
    lower bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(p / 100.0 * total))
    before = 0
    for index, count in enumerate(counts):
        if count and before + count >= rank:
            low, high = bounds(index)
            share = (rank - before - 0.5) / count  # the rank's place inside the bucket, 0..1
            if index == 0:
                return high * share
            return low if index == TOP else low * RATIO ** share
        before += count
    raise AssertionError("unreachable: the ranks add up to the total")
