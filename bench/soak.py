"""The soak: `python -m bench.soak [--minutes M] [--concurrency C] [--slice S]`.

Starts the same stack as `bench.run` (bench/stack.py: embedded stores, the fake upstream, N
workers and Envoy, a rate-limited key with a budget) and keeps it under closed-loop chat load for
M minutes (default 10, concurrency 64), in slices of S seconds with no pause between them. After
each slice it samples the memory of every process: the resident set (RSS) and the proportional set
(PSS, from /proc/<pid>/smaps_rollup: shared pages divided among the processes sharing them, so
PostgreSQL's shared buffers are counted once), with the children of each (PostgreSQL's backends).

The verdict compares the gateway's RSS (Envoy and the workers) at the end with the first slice
after warm-up: flat means within ±5 %. Every request must succeed. The figures are printed and
written to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import report
from bench.run import BENCH_LIMITS, _interrupt, check_answers, limited_key, run_phase
from bench.stack import REPO, BenchStack
from services.runtime.stores import remove_data

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
FLAT = 0.05  # the gateway's RSS may move this much between the first measured slice and the last
MIB = report.MIB


def _family(pid: int) -> list[psutil.Process]:
    try:
        process = psutil.Process(pid)
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def _pss_bytes(process: psutil.Process) -> int:
    """The proportional set size (Linux), or the RSS where it cannot be read."""
    try:
        for line in Path(f"/proc/{process.pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


def memory(pids: dict[str, int]) -> dict[str, dict[str, int]]:
    """RSS and PSS in bytes of each named process with its children."""
    out: dict[str, dict[str, int]] = {}
    for name, pid in pids.items():
        rss = pss = 0
        for member in _family(pid):
            try:
                rss += int(member.memory_info().rss)
            except psutil.Error:
                continue
            pss += _pss_bytes(member)
        out[name] = {"rss": rss, "pss": pss}
    return out


def _total(sample: dict[str, dict[str, int]], kind: str, names: list[str]) -> int:
    return sum(sample[name][kind] for name in names if name in sample)


def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    slices = max(1, round(args.minutes * 60 / args.slice))
    with BenchStack(root, workers=args.workers) as stack:
        check_answers(stack.base_url, stack.admin_key, "gateway")
        args.gateway_key = limited_key(stack.base_url, stack.admin_key)
        gateway = list(stack.gateway_pids())
        stores = [f"store-{name}" for name in stack.store_pids()]
        pids = {**stack.gateway_pids(), **{f"store-{n}": p for n, p in stack.store_pids().items()}}
        rows = []
        for index in range(slices):
            phase = argparse.Namespace(**{**vars(args), "seconds": args.slice,
                                          "warmup": args.warmup if index == 0 else 0.0})
            result = run_phase(stack, phase, "gateway", args.stream)
            sample = memory(pids)
            row = {"slice": index + 1, "completed": result["completed"], "errors": result["errors"],
                   "rps": result["rps"], "p50_ms": result["latency_ms"]["p50"],
                   "p99_ms": result["latency_ms"]["p99"],
                   "gateway_cpu_ms_per_req": result["gateway_cpu_ms_per_req"],
                   "gateway_rss": _total(sample, "rss", gateway),
                   "gateway_pss": _total(sample, "pss", gateway),
                   "stack_pss": _total(sample, "pss", gateway + stores),
                   "stack_rss": _total(sample, "rss", gateway + stores),
                   "per_process": sample}
            rows.append(row)
            print(f"  slice {index + 1}/{slices}: {row['completed']} requests, {row['errors']} errors, "
                  f"{row['rps']:.0f} rps, gateway RSS {row['gateway_rss'] / MIB:.1f} MiB, "
                  f"stack PSS {row['stack_pss'] / MIB:.1f} MiB", flush=True)
    first, last = rows[0], rows[-1]
    base = first["gateway_rss"]
    drift = (last["gateway_rss"] - base) / base if base else 0.0
    errors = sum(r["errors"] for r in rows)
    return {"meta": {"finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                     "minutes": args.minutes, "slice_s": args.slice, "concurrency": args.concurrency,
                     "workers": args.workers, "stream": args.stream, "limits": BENCH_LIMITS},
            "slices": rows, "requests": sum(r["completed"] for r in rows), "errors": errors,
            "gateway_rss_drift": round(drift, 4), "flat": abs(drift) <= FLAT and errors == 0,
            "peak_gateway_rss": max(r["gateway_rss"] for r in rows),
            "peak_stack_pss": max(r["stack_pss"] for r in rows),
            "peak_stack_rss": max(r["stack_rss"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="memory soak of the gateway (127.0.0.1 only)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--slice", type=float, default=60.0, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="unrecorded seconds before the first slice")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv)
    args.limits, args.profile, args.native = True, None, False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="aggregator-soak-"))
    print(f"soak: {args.minutes:g} min at concurrency {args.concurrency}, {args.workers} workers, "
          f"under {root}", flush=True)
    started = time.monotonic()
    try:
        results = soak(args, root)
    except KeyboardInterrupt:
        print("soak: interrupted; everything stopped", file=sys.stderr)
        return 130
    finally:
        remove_data(root)
    verdict = "flat" if results["flat"] else "NOT flat"
    print(f"soak: {results['requests']} requests, {results['errors']} errors in "
          f"{time.monotonic() - started:.0f} s; gateway RSS drift {results['gateway_rss_drift']:+.1%} "
          f"({verdict}); peak gateway RSS {results['peak_gateway_rss'] / MIB:.1f} MiB, "
          f"peak stack PSS {results['peak_stack_pss'] / MIB:.1f} MiB "
          f"(RSS {results['peak_stack_rss'] / MIB:.1f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {RESULTS.relative_to(REPO)}")
    return 0 if results["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
