"""Child processes of `up`: spawned so that they die with their parent, stopped with a deadline.

Dying with the parent is arranged by the child itself (`die_with_parent`, called first thing by
the CLI when `AGGREGATOR_PARENT_PID` is set), not by a `preexec_fn`: running Python between fork
and exec is unsafe in a parent with gRPC threads.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "AGGREGATOR_PARENT_PID"


def die_with_parent() -> None:
    """In a child spawned by `spawn`: SIGTERM when the parent dies, even by SIGKILL (Linux). If the
    parent is already gone (it died before this ran), exit now."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != int(parent):
        sys.exit(0)


def spawn(argv: Sequence[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            env={**env, PARENT_PID_ENV: str(os.getpid())},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM every process, wait up to `timeout_s` in all, then SIGKILL what is left."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def serve_command(
    *,
    services: str,
    host: str,
    port: int,
    ready_file: Path,
    config: Path,
    data_dir: Path | None = None,
    remotes: Sequence[str] = (),
) -> list[str]:
    """The argv of one `aggregator serve` worker; `remotes` are `name=host:port` pairs."""
    argv = [
        sys.executable,
        "-m",
        "services.runtime.cli",
        "serve",
        "--services",
        services,
        "--host",
        host,
        "--port",
        str(port),
        "--config",
        str(config),
        "--ready-file",
        str(ready_file),
    ]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    return argv + [f"--remote={remote}" for remote in remotes]


def wait_ready(
    processes: Mapping[str, subprocess.Popen[bytes]],
    ready_files: Sequence[Path],
    *,
    timeout_s: float,
    logs: Path,
) -> list[dict[str, Any]]:
    """Waits until every worker wrote its ready file (`serve --ready-file`); answers their contents
    ({"pid", "port", "private_port"}) in order. RuntimeError when a worker dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not all(path.exists() for path in ready_files):
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}; see {logs}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers not ready after {timeout_s:.0f} s; see {logs}")
        time.sleep(0.05)
    return [json.loads(path.read_text()) for path in ready_files]
