"""The load generator, run as its own process so that its CPU is nobody else's:

    python -m bench.loadgen --url URL --key KEY --seconds S --concurrency C [--stream] [--warmup W]

A closed loop: C tasks, each sending one chat request after another on its own keep-alive
connection. It warms up for W seconds (not recorded), prints `warm` and waits for a line on stdin
(the parent takes its CPU snapshot then), measures for S seconds, lets the requests in flight
finish, and prints one JSON line of results. A request counts as an error when the status is not
2xx, the body is not a chat completion with content (non-streaming), or the stream has no content
or no `data: [DONE]` (streaming); exceptions (timeouts, resets) are errors too.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

PROMPT = "Say hello to the benchmark in exactly twelve short words, please, and nothing more."
REQUEST_TIMEOUT_S = 30.0


def chat_body(model: str, stream: bool) -> bytes:
    """The request every task sends (the fake upstream echoes the prompt, one chunk per word)."""
    return orjson.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]})


@dataclass
class Tally:
    """What one phase saw: latencies in seconds, time to first content (streams) and errors by kind."""

    latencies: list[float] = field(default_factory=list)
    first_content: list[float] = field(default_factory=list)
    transit: list[float] = field(default_factory=list)  # content chunks: upstream write -> read here
    errors: Counter[str] = field(default_factory=Counter)


def completion_ok(body: bytes) -> bool:
    """A `chat.completion` whose first choice says something."""
    try:
        answer = orjson.loads(body)
        return bool(answer["choices"][0]["message"]["content"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return False


STAMP = b'"system_fingerprint":"fp_t'  # the fake upstream's --stamp-frames (tests/fakes/openai_upstream.py)


def transit_s(data: bytes, now_ns: int) -> float | None:
    """Seconds since the upstream wrote this chunk, from its stamp; None for an unstamped one."""
    start = data.find(STAMP)
    if start < 0:
        return None
    start += len(STAMP)
    end = data.find(b'"', start)
    return (now_ns - int(data[start:end])) / 1e9 if end > start else None


def has_content(data: bytes) -> bool:
    """Whether one SSE `data:` payload is a chunk carrying content text."""
    try:
        chunk = orjson.loads(data)
        return bool(chunk["choices"][0]["delta"].get("content"))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return False


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                      stream: bool, tally: Tally | None, transit: bool = False) -> None:
    """Sends one request and records it in `tally` (None: warm-up, nothing recorded); with
    `transit`, the transit time of every content chunk of a stream too."""
    started = time.perf_counter()
    first: float | None = None
    error: str | None = None
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if not 200 <= response.status < 300:
                await response.read()
                error = f"http_{response.status}"
            elif not stream:
                if not completion_ok(await response.read()):
                    error = "bad_body"
            else:
                done = False
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].rstrip()
                    if data == b"[DONE]":
                        done = True
                    elif (first is None or transit) and has_content(data):
                        if first is None:
                            first = time.perf_counter() - started
                        took = transit_s(data, time.time_ns()) if transit else None
                        if took is not None and tally is not None:
                            tally.transit.append(took)
                    elif data.startswith(b'{"error"'):
                        error = "stream_error_event"
                if error is None and (first is None or not done):
                    error = "stream_incomplete"
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        error = type(exc).__name__
    if tally is None:
        return
    if error is not None:
        tally.errors[error] += 1
        return
    tally.latencies.append(time.perf_counter() - started)
    if first is not None:
        tally.first_content.append(first)


async def run_phase(session: aiohttp.ClientSession, args: argparse.Namespace, seconds: float,
                    tally: Tally | None) -> float:
    """C tasks loop until `seconds` pass; answers the elapsed time, in-flight requests included."""
    body = chat_body(args.model, args.stream)
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    url = args.url.rstrip("/") + "/chat/completions"
    started = time.perf_counter()
    deadline = started + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            await one_request(session, url, body, headers, args.stream, tally, args.transit)

    await asyncio.gather(*(loop() for _ in range(args.concurrency)))
    return time.perf_counter() - started


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values, None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(fraction * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


def summary_ms(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    picks = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
    out: dict[str, float | None] = {}
    for name, fraction in picks.items():
        value = percentile(ordered, fraction)
        out[name] = None if value is None else round(value * 1000, 3)
    out["max"] = round(ordered[-1] * 1000, 3) if ordered else None
    out["mean"] = round(sum(ordered) / len(ordered) * 1000, 3) if ordered else None
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",))
    async with session:
        if args.warmup > 0:
            await run_phase(session, args, args.warmup, None)
        print("warm", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        tally = Tally()
        cpu_before = cpu_seconds()
        elapsed = await run_phase(session, args, args.seconds, tally)
        cpu_used = cpu_seconds() - cpu_before
    errors = sum(tally.errors.values())
    completed = len(tally.latencies) + errors
    return {"ok": len(tally.latencies), "errors": errors, "error_kinds": dict(tally.errors),
            "completed": completed, "elapsed_s": round(elapsed, 4),
            "rps": round(completed / elapsed, 2) if elapsed > 0 else 0.0,
            "latency_ms": summary_ms(tally.latencies),
            "first_content_ms": summary_ms(tally.first_content) if args.stream else None,
            "chunk_transit_ms": summary_ms(tally.transit) if tally.transit else None,
            "client_cpu_s": round(cpu_used, 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="closed-loop chat load generator (bench)")
    parser.add_argument("--url", required=True, help="base URL ending in /v1")
    parser.add_argument("--key", required=True, help="bearer key sent with every request")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--transit", action="store_true",
                        help="time each content chunk from its upstream stamp (a paced fake upstream)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # slower, still correct
        result = asyncio.run(main_async(args))
    else:
        result = uvloop.run(main_async(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
