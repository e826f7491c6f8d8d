"""Everything the benchmark measures, started on 127.0.0.1 and stopped again, whatever happens.

Embedded stores -> the fake OpenAI upstream (its own process, so its CPU is not the gateway's) ->
migrations, catalog and the admin key -> N `aggregator serve --services all` workers sharing one
gRPC port through SO_REUSEPORT (what `aggregator up` runs) -> Envoy in front of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.core.config import Config, StoreUrls, load_config
from services.runtime import children
from services.runtime.envoy import render_bootstrap
from services.runtime.envoy_process import EnvoyProcess
from services.runtime.stores import EmbeddedNats, EmbeddedPostgres, EmbeddedServer, EmbeddedValkey, free_port
from services.runtime.up import REPO, prepare_stores

MODEL = "gpt-4o-mini"
UPSTREAM_KEY_ENV = "FAKEAI_API_KEY"
READY_TIMEOUT_S = 60.0
# Variables of the caller's shell that would change what is measured or which stores are used.
_DROPPED_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "AGGREGATOR_ADMIN_KEY", "AGGREGATOR_SECRET",
                "AGGREGATOR_CONFIG", "DATABASE_URL", "REDIS_URL", "NATS_URL", "PROMETHEUS_MULTIPROC_DIR")


def die_with_parent() -> None:
    """Runs in a child before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def bench_config(upstream_url: str) -> dict[str, Any]:
    """The config file: one chat model, served by the fake upstream as an `openai` provider."""
    return {
        # No ops port: the benchmark scrapes nothing, and must not take 9090 from a real gateway.
        "edge": {"ops_port": 0},
        "providers": [{"name": "fakeai", "kind": "openai", "base_url": upstream_url,
                       "api_key_env": UPSTREAM_KEY_ENV}],
        "models": [{"id": MODEL, "type": "chat", "context_window": 128000,
                    "routes": [{"provider": "fakeai", "model": MODEL,
                                "input_per_1k": "0.00015", "output_per_1k": "0.0006"}]}],
    }


def read_line(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The next line `process` prints on stdout; RuntimeError if it exits or stays silent."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if line:
                return line.decode().strip()
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with status {process.returncode}")
    raise RuntimeError(f"process {process.args!r} printed nothing within {timeout_s:g} s")


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; idempotent."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class BenchStack:
    """The stores, the fake upstream and the gateway (workers + Envoy) under `root`.

    Use as a context manager: leaving it stops every process it started, in reverse order.
    """

    def __init__(self, root: Path, *, workers: int, distinct_ports: bool = False,
                 upstream_args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.upstream_args = upstream_args  # extra options of the fake upstream (bench.run --pace)
        self.workers = workers
        # Shared (what `aggregator up` does): one gRPC port for all workers, SO_REUSEPORT spreads
        # Envoy's few HTTP/2 connections. Distinct: a port per worker, each an endpoint of Envoy's
        # round-robin cluster, so requests (not connections) are spread.
        self.distinct_ports = distinct_ports
        self.grpc_ports: list[int] = []
        self.envoy_ports: list[int] = []
        self.admin_key = "sk_live_bench" + secrets.token_urlsafe(32)
        self.upstream_key = "sk-upstream-" + secrets.token_hex(12)
        self.upstream_url = ""  # http://127.0.0.1:PORT/v1
        self.base_url = ""  # Envoy's public listener
        self.upstream: subprocess.Popen[bytes] | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []
        self.envoy: EnvoyProcess | None = None
        self.stores: dict[str, EmbeddedServer] = {}
        self.urls: StoreUrls | None = None  # the stores' URLs, once started
        self._exit = contextlib.ExitStack()

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> BenchStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops everything started so far; a second Ctrl-C cannot cut this short."""
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._exit.close()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def _start(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        urls = self._start_stores()
        self._start_upstream()
        # A real config file, as `aggregator up` gives its workers (they read provider settings).
        self.config_path.write_text(json.dumps(bench_config(self.upstream_url), indent=1))  # JSON is YAML
        asyncio.run(self._prepare(load_config(self.config_path), urls))
        self._start_workers(urls)
        self._start_envoy()

    def _start_stores(self) -> StoreUrls:
        """PostgreSQL, Valkey and NATS (as tests/support/stores.py does, keeping their pids)."""
        urls = []
        for server_type in (EmbeddedPostgres, EmbeddedValkey, EmbeddedNats):
            server = server_type(self.root / "stores" / server_type.name, free_port())
            self._exit.callback(server.stop)
            urls.append(server.start())
            self.stores[server_type.name] = server
        self.urls = StoreUrls(*urls)
        return self.urls

    def _start_upstream(self) -> None:
        log = open(self.root / "upstream.log", "ab")  # noqa: SIM115 - closed with the stack
        self._exit.callback(log.close)
        argv = [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", "0",
                "--api-key", self.upstream_key, *self.upstream_args]
        self.upstream = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log, start_new_session=True, preexec_fn=die_with_parent)
        self._exit.callback(stop_process, self.upstream)
        port = int(read_line(self.upstream, READY_TIMEOUT_S))
        self.upstream_url = f"http://127.0.0.1:{port}/v1"

    async def _prepare(self, config: Config, urls: StoreUrls) -> None:
        # prepare_stores reads the admin key from the environment, as `aggregator up` does.
        saved = os.environ.get("AGGREGATOR_ADMIN_KEY")
        os.environ["AGGREGATOR_ADMIN_KEY"] = self.admin_key
        try:
            await prepare_stores(config, urls, self.data_dir)
        finally:
            if saved is None:
                os.environ.pop("AGGREGATOR_ADMIN_KEY", None)
            else:
                os.environ["AGGREGATOR_ADMIN_KEY"] = saved

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "aggregator.yaml"

    def _worker_env(self, urls: StoreUrls) -> dict[str, str]:
        from services.auth.secret_files import load_server_secret

        metrics_dir = self.data_dir / "metrics"  # multiprocess Prometheus files, as `up` sets
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in children.child_env({}).items() if k not in _DROPPED_ENV}
        env.update({
            "DATABASE_URL": urls.database_url, "REDIS_URL": urls.redis_url, "NATS_URL": urls.nats_url,
            "AGGREGATOR_SECRET": load_server_secret(self.data_dir).hex(),
            "AGGREGATOR_DATA_DIR": str(self.data_dir),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), UPSTREAM_KEY_ENV: self.upstream_key,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        return env

    def _start_workers(self, urls: StoreUrls) -> None:
        env = self._worker_env(urls)
        shared = free_port()
        self.grpc_ports = [free_port() if self.distinct_ports else shared for _ in range(self.workers)]
        ready = [self.data_dir / f"worker-{i}.ready" for i in range(self.workers)]
        self._exit.callback(children.stop_all, self.worker_processes, 10.0)
        for index, ready_file in enumerate(ready):
            argv = children.serve_command(
                services="all", host="127.0.0.1", port=self.grpc_ports[index], ready_file=ready_file,
                config=self.config_path, data_dir=self.data_dir)
            process = children.spawn(argv, env=env, log_path=self.root / "logs" / f"worker-{index}.log")
            self.worker_processes.append(process)
        workers = {f"worker {i}": p for i, p in enumerate(self.worker_processes)}
        answers = children.wait_ready(workers, ready, timeout_s=READY_TIMEOUT_S, logs=self.root / "logs")
        # As `up` does: Envoy balances over every worker's own port (see GrpcServer).
        self.envoy_ports = [int(answer["private_port"]) for answer in answers]

    def _start_envoy(self) -> None:
        http_port, admin_port = free_port(), free_port()
        bootstrap = render_bootstrap(http_port=http_port, admin_port=admin_port,
                                     upstreams=[("127.0.0.1", port) for port in self.envoy_ports],
                                     descriptor_path=REPO / "gen" / "descriptor.pb",
                                     lua_path=REPO / "envoy" / "error_shaper.lua", listen_address="127.0.0.1",
                                     access_log_path=str(self.root / "logs" / "envoy-access.log"))
        self.envoy = EnvoyProcess(bootstrap, self.root / "envoy")
        self._exit.callback(self.envoy.stop)
        self.envoy.start()
        self.base_url = f"http://127.0.0.1:{http_port}/v1"

    # -- what the report needs -----------------------------------------------------------------------
    def gateway_pids(self) -> dict[str, int]:
        """Every process of the gateway by name: the workers and Envoy."""
        pids = {f"worker-{i}": p.pid for i, p in enumerate(self.worker_processes)}
        if self.envoy is not None and self.envoy.pid is not None:
            pids["envoy"] = self.envoy.pid
        return pids

    def store_pids(self) -> dict[str, int]:
        """The main process of each data store (PostgreSQL's backends are its children)."""
        return {name: server.pid for name, server in self.stores.items() if server.pid is not None}

    def check_alive(self) -> None:
        """RuntimeError when a gateway or upstream process has died."""
        processes: dict[str, Any] = {f"worker-{i}": p for i, p in enumerate(self.worker_processes)}
        processes["upstream"] = self.upstream
        for name, process in processes.items():
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}")
