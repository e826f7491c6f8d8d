"""`aggregator up` as a user runs it: embedded stores, workers, Envoy; restart keeps keys; a clean
stop on SIGTERM within 20 s with nothing left behind; a data dir inside a private (0700) directory
works without widening it, and one that cannot be written is refused in one line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest
import yaml

from services.runtime.stores import free_port, remove_data, user_name
from services.runtime.up import REPO
from tests.e2e.harness import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e
STORE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "NATS_URL", "AGGREGATOR_ADMIN_KEY", "AGGREGATOR_SECRET")


def _write_config(path: Path, upstream: FakeOpenAI | SimpleNamespace) -> dict:
    config = {
        "edge": {
            "http_port": free_port(),
            "grpc_port": free_port(),
            "admin_port": free_port(),
            "ops_port": free_port(),
            "listen_address": "127.0.0.1",
        },
        "providers": [
            {
                "name": "fakeai",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "FAKEAI_API_KEY",
            }
        ],
        "models": [
            {
                "id": "gpt-4o-mini",
                "type": "chat",
                "routes": [
                    {
                        "provider": "fakeai",
                        "model": "gpt-4o-mini",
                        "input_per_1k": "0.001",
                        "output_per_1k": "0.002",
                    }
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return config


def _start(config_path: Path, data_dir: Path) -> tuple[subprocess.Popen[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES}
    env["FAKEAI_API_KEY"] = UPSTREAM_KEY
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.runtime.cli",
            "up",
            "--config",
            str(config_path),
            "--data-dir",
            str(data_dir),
            "--workers",
            "2",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, []


async def _wait_ready(process: subprocess.Popen[str], output: list[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    loop = asyncio.get_running_loop()
    while time.monotonic() < deadline:
        line = await loop.run_in_executor(None, process.stdout.readline)  # type: ignore[union-attr]
        if not line and process.poll() is not None:
            raise AssertionError("up exited early:\n" + "".join(output))
        output.append(line)
        if "ready at" in line:
            return
    raise AssertionError("up not ready:\n" + "".join(output))


def _descendants_of_data_dir(data_dir: Path) -> list[psutil.Process]:
    # As root PostgreSQL's cluster is elsewhere, linked from the data dir (docs/embedded-stores.md).
    places = {str(data_dir), str((data_dir / "postgres" / "pgdata").resolve())}
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(place in part for part in proc.info["cmdline"] or () for place in places):
                left.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return left


async def _stop(process: subprocess.Popen[str], data_dir: Path) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    elapsed = time.monotonic() - started
    assert process.returncode == 0
    assert not _descendants_of_data_dir(data_dir), "processes left behind after stop"
    return elapsed


def _modes(path: Path) -> dict[Path, int]:
    """The permission bits of `path` and of every directory above it."""
    return {directory: stat.S_IMODE(directory.stat().st_mode) for directory in (path, *path.parents)}


async def test_up_serves_restarts_with_keys_and_stops_cleanly(tmp_path: Path) -> None:
    # In a private directory, as a clone in `mktemp -d` or /root gives: as root PostgreSQL runs as
    # its own user, which cannot enter it, and nothing may be widened for it.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    modes = _modes(private)
    data_dir, config_path = private / "data", tmp_path / "aggregator.yaml"
    try:
        await _serve_restart_and_stop(data_dir, config_path)
    finally:
        remove_data(data_dir)  # with the PostgreSQL cluster it links to, as root
    assert _modes(private) == modes and modes[private] == 0o700


async def _serve_restart_and_stop(data_dir: Path, config_path: Path) -> None:
    async with FakeOpenAI(api_key=UPSTREAM_KEY) as upstream:
        config = _write_config(config_path, upstream)
        base = f"http://127.0.0.1:{config['edge']['http_port']}"
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

        process, output = _start(config_path, data_dir)
        try:
            await _wait_ready(process, output)
            # As root the cluster lives under /var/lib/aggregator, linked (docs/embedded-stores.md).
            assert (data_dir / "postgres" / "pgdata").is_symlink() == (os.geteuid() == 0)
            admin_key = (data_dir / "admin-key").read_text().strip()
            assert any(admin_key in line for line in output), "the first up prints the admin key once"
            assert (data_dir / "admin-key").stat().st_mode & 0o777 == 0o600
            async with httpx.AsyncClient(
                base_url=base, timeout=30, headers={"authorization": f"Bearer {admin_key}"}
            ) as http:
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/readyz")).json() == {"status": "ready"}
                assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
                metrics = (await http.get("/metrics")).text
                assert "aggregator_requests_total" in metrics
                assert (await http.get("/metrics", headers={"authorization": ""})).status_code == 401
            # Prometheus reads every worker's series on the ops port, without a key.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config['edge']['ops_port']}") as ops:
                scraped = (await ops.get("/metrics")).text
                assert 'model="gpt-4o-mini"' in scraped
                # The worker's own families too, merged across workers (docs/observability.md §1).
                assert 'aggregator_store_up{store="postgres"} 1.0' in scraped
                assert re.search(r'aggregator_upstream_response_seconds_count\{[^}]*outcome="ok"', scraped)
                assert (await ops.get("/readyz")).json() == {"status": "ready"}
            async with httpx.AsyncClient(
                base_url=base, timeout=30, headers={"authorization": f"Bearer {admin_key}"}
            ) as http:
                created = (await http.post("/v1/api-keys", json={"name": "survivor"})).json()
                limited = (await http.post("/v1/api-keys", json={"name": "limited",
                                                                 "rate_limit_per_minute": 5})).json()["key"]
            # Two workers, one limit: exactly 5 of 16 concurrent requests pass (docs/limits.md).
            async with httpx.AsyncClient(
                base_url=base, timeout=30, headers={"authorization": f"Bearer {limited}"}
            ) as http:
                answers = await asyncio.gather(*(http.post("/v1/chat/completions", json=chat)
                                                 for _ in range(16)))
            statuses = [answer.status_code for answer in answers]
            assert statuses.count(200) == 5 and statuses.count(429) == 11, statuses
            cli_key = subprocess.run(  # noqa: ASYNC221 - the gateway runs in other processes
                [
                    sys.executable,
                    "-m",
                    "services.runtime.cli",
                    "admin",
                    "--data-dir",
                    str(data_dir),
                    "create-key",
                    "--name",
                    "from-cli",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
                env={k: v for k, v in os.environ.items() if k not in STORE_VARIABLES},
            ).stdout.strip()
            assert cli_key.startswith("sk_live_")
            elapsed = await _stop(process, data_dir)
            assert elapsed < 20
        finally:
            if process.poll() is None:
                process.kill()

        process, output = _start(config_path, data_dir)
        try:
            await _wait_ready(process, output)
            assert not any(admin_key in line for line in output), "the admin key is shown only once"
            for key in (admin_key, created["key"], cli_key):
                async with httpx.AsyncClient(
                    base_url=base, timeout=30, headers={"authorization": f"Bearer {key}"}
                ) as http:
                    assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
            assert await _stop(process, data_dir) < 20
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("blocked", ["data dir", "run", "postgres"])
def test_up_refuses_a_directory_it_cannot_write_in_one_line(tmp_path: Path, blocked: str) -> None:
    """A regular file where a directory must be: no mount or privilege needed, and it stops root too."""
    config_path = tmp_path / "aggregator.yaml"
    _write_config(config_path, SimpleNamespace(base_url="http://127.0.0.1:9/v1"))
    if blocked == "data dir":
        (tmp_path / "a-file").write_text("")
        data_dir = tmp_path / "a-file" / "data"
        path = data_dir
    else:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        path = data_dir / blocked
        path.write_text("")
    process, _ = _start(config_path, data_dir)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    lines = output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aggregator: "), output
    assert str(path) in lines[0] and f"as user {user_name()}" in lines[0] and "--data-dir" in lines[0]
    if blocked == "postgres":
        assert "DATABASE_URL" in lines[0]
    assert not _descendants_of_data_dir(data_dir), "nothing starts"
