"""CPU time and memory of named processes, from psutil and /proc (Linux)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds (user + system, every thread) per process name, and the machine's busy/total."""

    per_process: dict[str, float]
    machine_busy_s: float
    machine_total_s: float


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its children alive now (PostgreSQL's backends); 0 if gone."""
    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0.0
    used = 0.0
    for member in family:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue  # ended between the listing and now
        used += times.user + times.system
    return used


def cpu_snapshot(pids: dict[str, int]) -> CpuSnapshot:
    """CPU seconds of each process of `pids` (with its children) so far."""
    per_process = {name: process_cpu_s(pid) for name, pid in pids.items()}
    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0.0)
    # guest time is already inside user time on Linux: leave it out of the total.
    total = sum(value for field, value in machine._asdict().items() if not field.startswith("guest"))
    return CpuSnapshot(per_process, total - idle, total)


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds each process used between two snapshots."""
    return {name: max(0.0, after.per_process.get(name, 0.0) - used)
            for name, used in before.per_process.items()}


def machine_busy_fraction(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """How busy every core of the machine was between two snapshots, 0..1."""
    total = after.machine_total_s - before.machine_total_s
    return (after.machine_busy_s - before.machine_busy_s) / total if total > 0 else 0.0


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set size so far (VmHWM), None if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    try:  # not Linux: the current RSS is the best there is
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def redis_commands(redis_url: str) -> dict[str, tuple[int, int]]:
    """Valkey's command statistics: command -> (calls, microseconds) since it started."""
    import redis  # the sync client: one call per phase, outside the measured processes

    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


def redis_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                completed: int) -> dict[str, Any]:
    """Valkey's work per request during a phase: commands and their microseconds (what Valkey spent
    executing them, not its network work), the busiest commands first."""
    rows = []
    for name, (calls, usec) in after.items():
        calls -= before.get(name, (0, 0))[0]
        usec -= before.get(name, (0, 0))[1]
        if calls > 0 and name != "info":
            rows.append((usec, name, calls))
    rows.sort(reverse=True)
    per = max(completed, 1)
    return {"commands_per_req": round(sum(r[2] for r in rows) / per, 3),
            "usec_per_req": round(sum(r[0] for r in rows) / per, 2),
            "top": {name: [round(calls / per, 3), round(usec / per, 2)] for usec, name, calls in rows[:6]}}
