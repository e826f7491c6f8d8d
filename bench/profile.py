"""Profiles of the gateway's workers during a benchmark phase (`python -m bench.run --profile`).

py-spy samples every worker's Python stacks (`--native` adds C frames: grpc, uvloop, protobuf)
while the phase's load runs; the raw collapsed stacks are written next to the results, and a top
list of each phase is printed: self time (the frame on top of the stack) and inclusive time (the
frame anywhere on it), as shares of all samples. A flame graph can be drawn from the raw file
(`flamegraph.pl`, speedscope). Envoy ships stripped, so its CPU is attributed by ablation (turning
one filter off, bench/README.md), not by a profile.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

SAMPLE_RATE = 250  # per second: enough for a stable top list, little overhead on the worker


def py_spy() -> str:
    """The py-spy executable of this environment (a dev dependency)."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: make gen installs it (requirements.lock)")
    return found


def start(pids: dict[str, int], seconds: float, out_dir: Path, phase: str,
          native: bool = False) -> list[subprocess.Popen[bytes]]:
    """One py-spy recorder per worker for `seconds`; each writes `<phase>-<worker>.txt`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in pids.items():
        argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                "--rate", str(SAMPLE_RATE), "--format", "raw",
                "--output", str(out_dir / f"{phase}-{name}.txt"),
                # Native frames need the process paused for each sample (more overhead).
                *(["--native"] if native else ["--nonblocking"])]
        with open(out_dir / f"{phase}-{name}.log", "wb") as log:
            recorders.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    return recorders


def finish(recorders: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    for recorder in recorders:
        try:
            recorder.wait(timeout_s)
        except subprocess.TimeoutExpired:
            recorder.kill()


def top(files: list[Path], limit: int = 25) -> str:
    """Self and inclusive shares of the collapsed stacks in `files` (all workers together)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            samples = int(count)
            total += samples
            frames = stack.split(";")
            own[frames[-1]] += samples
            for frame in set(frames):
                anywhere[frame] += samples
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples; self:"]
    lines += [f"    {100 * n / total:5.1f}%  {frame[:120]}" for frame, n in own.most_common(limit)]
    lines.append("  inclusive:")
    lines += [f"    {100 * n / total:5.1f}%  {frame[:120]}" for frame, n in anywhere.most_common(limit)]
    return "\n".join(lines)
