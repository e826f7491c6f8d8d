"""`aggregator up`: the whole gateway on one machine, started and stopped by one command.

Order: a preflight of every directory it writes (nothing starts when one cannot be written) ->
data stores (embedded unless DATABASE_URL/REDIS_URL/NATS_URL name external ones) ->
migrations -> catalog sync -> JetStream streams -> bootstrap admin key -> service workers (one
per core, sharing the gRPC port with SO_REUSEPORT) -> Envoy. Stop (SIGINT/SIGTERM): Envoy stops
taking connections, workers finish in-flight calls and flush usage, then stores stop; within 20 s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core.config import Config, StoreUrls
from services.runtime import children

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
WORKER_READY_TIMEOUT_S = 60.0
# Envoy's access log moves to envoy-access.log.1 past this size (checked every 10 s: the
# supervising loop ticks every 0.5 s), so the run dir holds at most two such files.
ACCESS_LOG_MAX_BYTES = 64 * 1024 * 1024
ROTATE_EVERY_TICKS = 20


@dataclass
class Stack:
    """Everything `up` started, so that it can stop it in reverse order."""

    config: Config
    config_path: Path
    data_dir: Path
    workers: int
    stores: list[Any] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    envoy: Any = None
    embedded: dict[str, Any] | None = None  # the embedded stores to start, by their URL variable

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def preflight(self) -> None:
        """Proves, before anything starts, that every directory `up` writes can be written: the
        data dir, run/ (Envoy's bootstrap and logs, the workers' logs) and each embedded store's.
        Raises DataDirError, one line naming the path, the user and the ways out."""
        from services.runtime.stores import EmbeddedNats, EmbeddedPostgres, EmbeddedValkey, writable_dir

        elsewhere = "use another --data-dir"
        writable_dir(self.data_dir, elsewhere)
        for path in (self.run_dir, self.run_dir / "logs", self.run_dir / "envoy"):
            writable_dir(path, f"{elsewhere} (Envoy and the service workers write their files there)")
        self.embedded = {}
        for env, server_class, name in (
            ("DATABASE_URL", EmbeddedPostgres, "postgres"),
            ("REDIS_URL", EmbeddedValkey, "valkey"),
            ("NATS_URL", EmbeddedNats, "nats"),
        ):
            if not os.environ.get(env):
                server = server_class(self.data_dir / name, 0)  # its port is chosen as it starts
                server.preflight()
                self.embedded[env] = server

    def start_stores(self) -> StoreUrls:
        """External stores where their URL is set, embedded real servers otherwise."""
        from services.runtime.stores import free_port

        if self.embedded is None:
            self.preflight()
        assert self.embedded is not None
        urls = {}
        for env in ("DATABASE_URL", "REDIS_URL", "NATS_URL"):
            server = self.embedded.get(env)
            if server is None:
                urls[env] = os.environ[env]
                continue
            server.port = free_port()
            urls[env] = server.start()
            self.stores.append(server)
            print(f"  {server.name}: embedded, {_redact(urls[env])}", flush=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_file = self.run_dir / "stores.env"
        run_file.write_text("".join(f"{k}={v}\n" for k, v in urls.items()))
        run_file.chmod(0o600)
        return StoreUrls(urls["DATABASE_URL"], urls["REDIS_URL"], urls["NATS_URL"])

    async def prepare(self, urls: StoreUrls) -> str | None:
        """Migrations, catalog, streams and the bootstrap admin key; answers a new admin key."""
        applied, admin_key = await prepare_stores(self.config, urls, self.data_dir, warn=_print_warning)
        if applied:
            print(f"  migrations applied: {', '.join(applied)}", flush=True)
        return admin_key

    def start_workers(self, urls: StoreUrls) -> None:
        from services.auth.secret_files import load_server_secret

        metrics_dir = self.run_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        for ready in self.run_dir.glob("worker-*.ready"):
            ready.unlink()
        env = children.child_env(
            {
                "DATABASE_URL": urls.database_url,
                "REDIS_URL": urls.redis_url,
                "NATS_URL": urls.nats_url,
                "AGGREGATOR_SECRET": load_server_secret(self.data_dir).hex(),
                "AGGREGATOR_DATA_DIR": str(self.data_dir),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            }
        )
        edge = self.config.edge
        for index in range(self.workers):
            argv = children.serve_command(
                services="all",
                host=edge.services_address,
                port=edge.grpc_port,
                ready_file=self.run_dir / f"worker-{index}.ready",
                config=self.config_path,
            )
            log_path = self.run_dir / "logs" / f"worker-{index}.log"
            self.processes.append(children.spawn(argv, env=env, log_path=log_path))

    def wait_workers_ready(self) -> list[int]:
        """Waits for every worker; answers their own ports (Envoy's endpoints)."""
        ready = children.wait_ready(
            {f"worker {p.pid}": p for p in self.processes},
            [self.run_dir / f"worker-{i}.ready" for i in range(self.workers)],
            timeout_s=WORKER_READY_TIMEOUT_S,
            logs=self.run_dir / "logs",
        )
        return [int(entry["private_port"]) for entry in ready]

    def start_envoy(self, worker_ports: list[int]) -> str:
        from services.runtime.envoy import render_bootstrap
        from services.runtime.envoy_process import EnvoyProcess

        edge = self.config.edge
        bootstrap = render_bootstrap(
            http_port=edge.http_port,
            admin_port=edge.admin_port,
            upstreams=[("127.0.0.1", port) for port in worker_ports],
            descriptor_path=REPO / "gen" / "descriptor.pb",
            lua_path=REPO / "envoy" / "error_shaper.lua",
            listen_address=edge.listen_address,
            max_request_bytes=edge.max_request_bytes,
            access_log_path=str(self.access_log_path),
            route_timeout_s=self.config.longest_deadline_s,
        )
        self.envoy = EnvoyProcess(bootstrap, self.run_dir / "envoy")
        self.envoy.start()
        return f"http://127.0.0.1:{edge.http_port}"

    @property
    def access_log_path(self) -> Path:
        return self.run_dir / "logs" / "envoy-access.log"

    def rotate_logs(self) -> None:
        """Keeps Envoy's access log (one JSON line per request, ~20 MB a minute at 1,000 requests a
        second) to two files of at most ACCESS_LOG_MAX_BYTES each."""
        if self.envoy is not None:
            self.envoy.rotate_access_log(self.access_log_path, ACCESS_LOG_MAX_BYTES)

    def stop(self) -> None:
        """Reverse order; every step bounded so the whole stop fits in 20 s."""
        if self.envoy is not None:
            self.envoy.drain(seconds=2.0)
        children.stop_all(self.processes, timeout_s=8.0)
        if self.envoy is not None:
            self.envoy.stop()
        (self.run_dir / "stores.env").unlink(missing_ok=True)
        for store in reversed(self.stores):
            try:
                store.stop(timeout=5.0)
            except Exception:
                log.exception("stopping %s", type(store).__name__)


async def prepare_stores(
    config: Config, urls: StoreUrls, data_dir: Path, *, warn: Callable[[str], None] | None = None
) -> tuple[list[str], str | None]:
    """Migrations, catalog sync, JetStream streams and the bootstrap admin key, before any worker.

    Answers the migrations applied and the admin key when one was just created (shown once).
    `warn` gets the one line saying that the bootstrap admin key was revoked (it stays revoked).
    """
    from services.auth.admin import ensure_bootstrap_admin_key
    from services.auth.secret_files import load_server_secret
    from services.core.db import create_pool
    from services.core.migrate import apply_migrations
    from services.core.nats import connect_nats, ensure_streams
    from services.routing.repository import sync_catalog
    from services.routing.servicer import CATALOG_CHANGED_SUBJECT

    applied = await apply_migrations(urls.database_url)
    pool = await create_pool(urls.database_url, min_size=1, max_size=2)
    nc = await connect_nats(urls.nats_url, name="aggregator-up")
    try:
        await sync_catalog(pool, config)
        await ensure_streams(nc.jetstream(), usage_max_bytes=config.usage_stream_max_bytes)
        await nc.publish(CATALOG_CHANGED_SUBJECT, b"")
        admin_key = await ensure_bootstrap_admin_key(
            pool, load_server_secret(data_dir), data_dir, warn=warn
        )
    finally:
        await nc.drain()
        await pool.close()
    return applied, admin_key


def _print_warning(line: str) -> None:
    print(f"aggregator: warning: {line}", flush=True)


def _redact(url: str) -> str:
    """A URL without its password, for printing."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        rest = f"{credentials.split(':')[0]}:***@{host}" if ":" in credentials else rest
    return f"{scheme}{sep}{rest}"


def run_up(config: Config, config_path: Path, data_dir: Path, workers: int) -> int:
    """Starts everything, prints the URL, blocks until SIGINT/SIGTERM, then stops everything.

    A directory that cannot be written stops it before anything starts: DataDirError, which the
    command line prints as one line.
    """
    stack = Stack(config, config_path, data_dir, workers)
    stack.preflight()
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print(f"aggregator: starting ({workers} workers, data in {data_dir})", flush=True)
        urls = stack.start_stores()
        admin_key = asyncio.run(stack.prepare(urls))
        if admin_key:
            print(f"  admin key (shown once, also in {data_dir / 'admin-key'}): {admin_key}", flush=True)
        stack.start_workers(urls)
        url = stack.start_envoy(stack.wait_workers_ready())
        print(f"aggregator: ready at {url} (gRPC also on port {config.edge.grpc_port})", flush=True)
        if config.edge.ops_port:
            ops = f"http://{config.edge.services_address}:{config.edge.ops_port}"
            print(f"  ops (no key): {ops}/metrics, /healthz, /readyz", flush=True)
        for tick in itertools.count():
            for process in stack.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"worker {process.pid} exited with status {process.returncode}")
            if tick % ROTATE_EVERY_TICKS == 0:
                stack.rotate_logs()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("aggregator: stopping", flush=True)
        return_code = 0
    except Exception as exc:
        print(f"aggregator: {exc}", file=sys.stderr, flush=True)
        return_code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        print("aggregator: stopped", flush=True)
    return return_code
