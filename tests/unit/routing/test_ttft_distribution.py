"""The distribution of times to first token (services/routing/ttft_distribution.py, docs/routing.md
§4): the buckets' mapping and widths, and percentiles read from counts against the sorted samples'
own percentile."""

from __future__ import annotations

import math
import random

import pytest

from services.routing import ttft_distribution as dist
from services.routing.health import Health, parse


def nearest_rank(samples: list[float], p: float) -> float:
    """The p-th percentile of the samples themselves (nearest rank): what the counts estimate."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_every_time_falls_inside_its_buckets_bounds() -> None:
    rng = random.Random(11)
    for _ in range(5000):
        ttft = math.exp(rng.uniform(math.log(0.001), math.log(300.0)))
        low, high = dist.bounds(dist.bucket(ttft))
        assert low * (1 - 1e-9) <= ttft < high * (1 + 1e-9)


def test_buckets_span_10_ms_to_120_s_each_at_most_20_percent_wide() -> None:
    assert dist.bucket(0.0) == 0 and dist.bucket(0.0099) == 0 and dist.bucket(0.0101) == 1
    assert dist.bucket(120.0) < dist.TOP and dist.bucket(10_000.0) == dist.TOP
    for index in range(1, dist.TOP):
        low, high = dist.bounds(index)
        assert high / low == pytest.approx(1.2)
    assert dist.bounds(dist.TOP)[1] == math.inf
    assert dist.tally([0.05, 0.05, 0.051, 2.0]) == {dist.bucket(0.05): 3, dist.bucket(2.0): 1}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [50, 90, 95, 99])
def test_a_percentile_from_counts_is_within_one_bucket_of_the_samples(seed: int, p: int) -> None:
    rng = random.Random(seed)
    # Log-normal times around 300 ms with a long tail, plus a few stalls, kept within 10 ms..120 s.
    size = rng.randint(20, 3000)
    samples = [min(120.0, max(0.01, rng.lognormvariate(math.log(0.3), 0.8))) for _ in range(size)]
    samples += [rng.uniform(2.0, 30.0) for _ in range(len(samples) // 50)]
    counts = [0] * dist.BUCKETS
    for index, count in dist.tally(samples).items():
        counts[index] = count
    estimate, true = dist.percentile(counts, p), nearest_rank(samples, p)
    assert estimate is not None
    assert true / 1.2 <= estimate <= true * 1.2  # the same bucket: one bucket width at most
    assert dist.bucket(estimate) == dist.bucket(true)


def test_the_edges_of_the_range() -> None:
    assert dist.percentile([0] * dist.BUCKETS, 95) is None
    under = dist.percentile([20] + [0] * dist.TOP, 95)
    assert under is not None and 0 < under < 0.01
    top = dist.percentile([0] * dist.TOP + [20], 50)
    assert top == dist.bounds(dist.TOP)[0]  # the open bucket answers its lower bound


def test_windows_are_merged_and_their_keys_expire_after_the_next_window() -> None:
    assert dist.merged([{"3": "2", "40": "1"}, {"3": "5", "x": "9", "99": "1"}]) == tuple(
        7 if i == 3 else 1 if i == 40 else 0 for i in range(dist.BUCKETS))
    assert dist.merged([{}, {}]) == ()
    now = 1_800_000_123.0
    window = dist.window(now)
    assert dist.key("p|http://x:1/v1", window) == f"routing:ttft:{window}:p|http://x:1/v1"
    # Read during this window and the next; kept one window more for clocks that differ.
    assert dist.ttl_ms(now) / 1000 == pytest.approx((window + 3) * dist.WINDOW_S - now)
    assert dist.ttl_ms(now) / 1000 > 2 * dist.WINDOW_S


def test_health_has_a_percentile_only_with_enough_samples() -> None:
    fast = {str(dist.bucket(0.08)): str(dist.MIN_SAMPLES - 2)}
    few = parse({"n": "19"}, 0, [fast, {str(dist.bucket(0.5)): "1"}])
    assert few.ttft_counts and few.ttft_percentile_s(95) is None and few.ttft_p95_s is None
    enough = parse({"n": "20"}, 0, [fast, {str(dist.bucket(0.5)): "2"}])  # both windows count
    p95 = enough.ttft_p95_s
    assert p95 is not None and 0.5 / 1.2 < p95 < 0.5 * 1.2  # the 19th of 20 is a slow one
    assert enough.ttft_percentile_s(50) == pytest.approx(0.08, rel=0.2)
    assert Health().ttft_percentile_s(95) is None
