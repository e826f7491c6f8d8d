"""The gateway benchmark: `python -m bench.run [--seconds S] [--concurrency C] [--workers N]`.

Starts embedded stores, the fake OpenAI upstream, the gateway (N workers + Envoy, auth on) on
127.0.0.1, checks that the gateway answers, then drives four closed-loop phases with a load
generator in its own process: chat without and with streaming, directly against the upstream (the
baseline) and through the gateway. Prints a table and writes bench/results/latest.json. Every
process it started is stopped at the end, on error and on Ctrl-C too.

The gateway phases use a key of their own carrying limits and a budget that never bite
(`--limits`, the default: requests per minute and per day, tokens per minute, a monthly budget),
so each request pays for its round trip as a limited customer's would; `--no-limits` uses the
unlimited admin key.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from bench import measure, profile, report
from bench.loadgen import REQUEST_TIMEOUT_S, chat_body
from bench.stack import MODEL, REPO, BenchStack, die_with_parent, read_line, stop_process
from services.runtime.stores import remove_data

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
# The baseline first (the upstream alone), then the same load through the gateway.
PHASES = (("direct_nonstream", "direct", False), ("direct_stream", "direct", True),
          ("gateway_nonstream", "gateway", False), ("gateway_stream", "gateway", True))


def _post(url: str, key: str, stream: bool) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    request = urllib.request.Request(url + "/chat/completions", data=chat_body(MODEL, stream), method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# Limits and a budget a benchmark cannot reach, so every request is checked, counted and held but
# never refused.
BENCH_LIMITS = {"rate_limit_per_minute": 10_000_000, "rate_limit_per_day": 1_000_000_000,
                "tokens_per_minute": 2_000_000_000, "max_budget_usd": "1000000000",
                "budget_period": "monthly"}


def limited_key(base_url: str, admin_key: str) -> str:
    """A new key carrying BENCH_LIMITS, created through the gateway's own API (`base_url` ends in /v1)."""
    body = json.dumps({"name": "bench", **BENCH_LIMITS}).encode()
    request = urllib.request.Request(base_url + "/api-keys", data=body, method="POST", headers={
        "Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310 - loopback
        return str(json.loads(response.read())["key"])


def check_answers(url: str, key: str, where: str) -> None:
    """One request of each kind must be a 200 with content; RuntimeError otherwise."""
    status, body = _post(url, key, stream=False)
    try:
        content = json.loads(body)["choices"][0]["message"]["content"] if status == 200 else None
    except (ValueError, LookupError, TypeError):
        content = None
    if not content:
        raise RuntimeError(f"{where}: non-streaming chat answered {status}: {body[:500]!r}")
    status, body = _post(url, key, stream=True)
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    try:
        text = "".join((json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                       for e in events[:-1])
    except (ValueError, LookupError, TypeError, AttributeError):
        text = ""
    if status != 200 or not events or events[-1] != b"[DONE]" or not text:
        raise RuntimeError(f"{where}: streaming chat answered {status}: {body[:500]!r}")
    print(f"  {where}: ok ({content!r})", flush=True)


def run_phase(stack: BenchStack, args: argparse.Namespace, target: str, stream: bool) -> dict[str, Any]:
    """One closed-loop phase; answers the load generator's figures plus CPU per process."""
    if target == "gateway":
        url, key = stack.base_url, args.gateway_key
    else:
        url, key = stack.upstream_url, stack.upstream_key
    argv = [sys.executable, "-m", "bench.loadgen", "--url", url, "--key", key, "--model", MODEL,
            "--seconds", str(args.seconds), "--warmup", str(args.warmup),
            "--concurrency", str(args.concurrency), *(["--stream"] if stream else []),
            *(["--transit"] if stream and args.pace else [])]
    assert stack.upstream is not None
    pids = {**stack.gateway_pids(), "upstream": stack.upstream.pid,
            **{f"store-{name}": pid for name, pid in stack.store_pids().items()}}
    with open(stack.root / "logs" / "loadgen.log", "ab") as log:
        # The key travels on the command line of a local, short-lived process: a throwaway test key.
        process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                   start_new_session=True, preexec_fn=die_with_parent)
    recorders: list[subprocess.Popen[bytes]] = []
    try:
        if read_line(process, args.warmup + REQUEST_TIMEOUT_S + 30) != "warm":
            raise RuntimeError("load generator: unexpected output")
        before = measure.cpu_snapshot(pids)
        assert stack.urls is not None
        commands_before = measure.redis_commands(stack.urls.redis_url)
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.flush()
        if args.profile and target == "gateway":
            workers = {k: v for k, v in stack.gateway_pids().items() if k.startswith("worker-")}
            recorders = profile.start(workers, args.seconds, args.profile, _phase_name(target, stream),
                                      native=args.native)
        result: dict[str, Any] = json.loads(read_line(process, args.seconds + REQUEST_TIMEOUT_S + 30))
        after = measure.cpu_snapshot(pids)
        commands = measure.redis_delta(commands_before, measure.redis_commands(stack.urls.redis_url),
                                       result["completed"])
        process.wait(10)
    finally:
        stop_process(process)
        profile.finish(recorders)
    stack.check_alive()
    return {**_with_cpu(result, target, stream, measure.cpu_delta(before, after),
                        measure.machine_busy_fraction(before, after)), "valkey": commands}


# The fake upstream paced as the side-by-side harness paces its mock (docs/performance.md): a
# model's time to first token, then one chunk every 10 ms, each stamped with the time it leaves.
PACED_UPSTREAM = ("--first-frame-delay-ms", "50", "--chunk-delay-ms", "10", "--stamp-frames")


def _phase_name(target: str, stream: bool) -> str:
    return f"{target}_{'stream' if stream else 'nonstream'}"


def _with_cpu(result: dict[str, Any], target: str, stream: bool, cpu: dict[str, float],
              busy: float) -> dict[str, Any]:
    """The load generator's result plus CPU: per process, and per request by group."""
    completed = result["completed"]
    workers_s = sum(v for name, v in cpu.items() if name.startswith("worker-"))
    envoy_s = cpu.get("envoy", 0.0)
    stores_s = sum(v for name, v in cpu.items() if name.startswith("store-"))
    per_req = report.per_request_ms
    # CPU the machine spent on processes that are none of ours (other work on the host): figures
    # taken while it is high are noisy.
    ours = sum(cpu.values()) + result["client_cpu_s"]
    capacity = result["elapsed_s"] * (os.cpu_count() or 1)
    others = max(0.0, busy - ours / capacity) if capacity else 0.0
    return {**result, "target": target, "stream": stream, "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
            "cpu_ms_per_req": {k: per_req(v, completed) for k, v in cpu.items()},
            "gateway_cpu_ms_per_req": per_req(workers_s + envoy_s, completed),
            "workers_cpu_ms_per_req": per_req(workers_s, completed),
            "envoy_cpu_ms_per_req": per_req(envoy_s, completed),
            "stores_cpu_ms_per_req": per_req(stores_s, completed),
            "upstream_cpu_ms_per_req": per_req(cpu.get("upstream", 0.0), completed),
            "client_cpu_ms_per_req": per_req(result["client_cpu_s"], completed),
            "worker_cpu_share": {k: round(v / workers_s, 3) if workers_s else None
                                 for k, v in cpu.items() if k.startswith("worker-")},
            "machine_busy": round(busy, 3), "machine_busy_others": round(others, 3)}


def _peak_rss(stack: BenchStack) -> dict[str, Any]:
    per_process = {name: measure.peak_rss_bytes(pid) for name, pid in stack.gateway_pids().items()}
    return {"per_process": per_process, "gateway_total": sum(v for v in per_process.values() if v)}


def benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    started = time.monotonic()
    print(f"bench: starting stores, upstream, {args.workers} workers and Envoy under {root}", flush=True)
    upstream_args = PACED_UPSTREAM if args.pace else ()
    with BenchStack(root, workers=args.workers, distinct_ports=args.ports == "distinct",
                    upstream_args=upstream_args) as stack:
        print(f"  ready in {time.monotonic() - started:.1f} s; gateway {stack.base_url}", flush=True)
        check_answers(stack.upstream_url, stack.upstream_key, "direct")
        args.gateway_key = limited_key(stack.base_url, stack.admin_key) if args.limits else stack.admin_key
        check_answers(stack.base_url, args.gateway_key, "gateway")
        phases = {}
        for name, target, stream in PHASES:
            print(f"bench: {name} ({args.warmup:g} s warm-up + {args.seconds:g} s, "
                  f"concurrency {args.concurrency})", flush=True)
            phases[name] = run_phase(stack, args, target, stream)
        rss = _peak_rss(stack)
        print("bench: stopping", flush=True)
    return {"meta": {"finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": args.seconds,
                     "warmup_s": args.warmup, "concurrency": args.concurrency, "workers": args.workers,
                     "limits": args.limits, "pace": args.pace,
                     "ports": args.ports,
                     "cpu_count": os.cpu_count(), "python": platform.python_version(),
                     "wall_s": round(time.monotonic() - started, 1)},
            "phases": phases, "derived": report.derive(phases), "peak_rss": rss}


def _interrupt(signum: int, _frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gateway benchmark (127.0.0.1 only)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per phase (4 phases)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds before each phase")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="gateway worker processes")
    parser.add_argument("--ports", choices=("shared", "distinct"), default="shared",
                        help="one gRPC port for all workers (as `aggregator up`) or one Envoy endpoint each")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--limits", action=argparse.BooleanOptionalAction, default=True,
                        help="gateway requests with a rate-limited key (default) or the unlimited admin key")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy every worker during the gateway phases; raw stacks and top lists in DIR")
    parser.add_argument("--native", action="store_true", help="with --profile: C frames too (grpc, uvloop)")
    parser.add_argument("--pace", action="store_true",
                        help="streams paced as a model writes them: 50 ms to the first chunk, 10 ms "
                             "between chunks; each content chunk's transit is timed")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.concurrency < 1 or args.workers < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --concurrency and --workers >= 1")
    # Ctrl-C and SIGTERM unwind through every `finally`, which stops what was started. SIGINT is
    # set explicitly: a shell starting us in the background would have it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="aggregator-bench-"))
    try:
        results = benchmark(args, root)
    except KeyboardInterrupt:
        print("bench: interrupted; everything stopped", file=sys.stderr)
        remove_data(root)  # and the PostgreSQL cluster it links to, as root
        return 130
    except Exception:
        print(f"bench: failed; everything stopped; logs kept in {root / 'logs'}", file=sys.stderr)
        raise
    if not args.keep:
        remove_data(root)
    print()
    print(report.table(results))
    if args.profile:
        for name, _target, _stream in PHASES[2:]:
            print(f"\nprofile of {name} (every worker; {args.profile}):")
            print(profile.top(sorted(args.profile.glob(f"{name}-worker-*.txt"))))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
