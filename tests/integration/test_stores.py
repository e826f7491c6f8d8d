"""The embedded servers: they start, answer, keep their data, and leave nothing running."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest
import redis.asyncio as aioredis

from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.redis import create_redis
from services.runtime.stores import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServer,
    EmbeddedValkey,
    StoreError,
    free_port,
    remove_data,
)

REPO = Path(__file__).resolve().parents[2]


def _tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants."""
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def _assert_gone(processes: list[psutil.Process]) -> None:
    alive = [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aggregator-test-"))  # 0700, as the stores must cope with
    yield path
    remove_data(path)


async def test_postgres_starts_answers_and_stops(root: Path) -> None:
    server = EmbeddedPostgres(root / "pg", free_port())
    url = server.start()
    try:
        assert url == f"postgresql://postgres@127.0.0.1:{server.port}/aggregator"
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "aggregator"
            await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        finally:
            await conn.close()
        assert server.pid is not None
        processes = _tree(server.pid)
        assert len(processes) > 1  # the postmaster and its background workers
    finally:
        server.stop()
    _assert_gone(processes)
    assert server.pid is None

    # A second start reuses the cluster (no initdb) and the database's data.
    server.start()
    try:
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT v FROM kept") == 42
        await conn.close()
    finally:
        server.stop()


async def test_postgres_recovers_from_a_killed_run(root: Path) -> None:
    data_dir = root / "pg"
    server = EmbeddedPostgres(data_dir, free_port())
    server.start()
    assert server.pid is not None
    processes = _tree(server.pid)
    os.killpg(server.pid, signal.SIGKILL)  # as if the machine had pulled the plug
    for proc in processes:
        proc.wait(10)
    assert (data_dir / "pgdata" / "postmaster.pid").exists()  # stale
    server.stop()

    again = EmbeddedPostgres(data_dir, free_port())
    url = again.start()
    try:
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        again.stop()


@pytest.mark.parametrize("server_type", [EmbeddedPostgres, EmbeddedValkey, EmbeddedNats])
def test_a_server_dies_with_its_killed_parent(root: Path, server_type: type[EmbeddedServer]) -> None:
    """A killed `aggregator up` (SIGKILL: no cleanup runs) leaves no store behind."""
    script = (f"import sys; from services.runtime.stores import {server_type.__name__} as S; "
              f"s = S(__import__('pathlib').Path(sys.argv[1]), int(sys.argv[2])); s.start(); "
              "print(s.pid, flush=True); sys.stdin.read()")
    parent = subprocess.Popen([sys.executable, "-c", script, str(root / "store"), str(free_port())],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    processes: list[psutil.Process] = []
    try:
        assert parent.stdout is not None
        processes = _tree(int(parent.stdout.readline()))
        parent.kill()
        parent.wait(10)
        _gone, alive = psutil.wait_procs(processes, timeout=30)
        assert not alive, f"{server_type.name} outlived its killed parent: {alive}"
    finally:
        parent.kill()
        parent.wait(10)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.parametrize("server_type", [EmbeddedPostgres, EmbeddedValkey, EmbeddedNats])
def test_a_server_orphaned_by_a_killed_parent_is_replaced(root: Path,
                                                           server_type: type[EmbeddedServer]) -> None:
    orphaned = server_type(root / "store", free_port())
    orphaned.start()
    assert orphaned.pid is not None
    orphan_processes = _tree(orphaned.pid)

    # A new run on the same directory must not share it with the server the old run left behind.
    successor = server_type(root / "store", free_port())
    successor.start()
    try:
        for proc in orphan_processes:
            proc.wait(10)
        _assert_gone(orphan_processes)
        assert successor.pid is not None and successor.pid != orphaned.pid
    finally:
        successor.stop()
        orphaned.stop()


async def test_valkey_keeps_counters_across_a_restart(root: Path) -> None:
    server = EmbeddedValkey(root / "valkey", free_port())
    url = server.start()
    assert url == f"redis://127.0.0.1:{server.port}/0"
    try:
        client = aioredis.Redis.from_url(url)
        assert await client.incrby("budget", 7) == 7
        await client.aclose()
    finally:
        assert server.pid is not None
        processes = _tree(server.pid)
        server.stop()
    _assert_gone(processes)

    server.start()
    try:
        client = aioredis.Redis.from_url(url)
        assert await client.get("budget") == b"7"  # from the append-only file
        await client.aclose()
    finally:
        server.stop()


async def test_nats_serves_jetstream_and_keeps_streams(root: Path) -> None:
    server = EmbeddedNats(root / "nats", free_port())
    url = server.start()
    assert url == f"nats://127.0.0.1:{server.port}"
    try:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        await js.publish("kept.one", b"x")
        await nc.close()
    finally:
        assert server.pid is not None
        processes = _tree(server.pid)
        server.stop()
    _assert_gone(processes)

    server.start()
    try:
        nc = await nats.connect(url)
        info = await nc.jetstream().stream_info("KEPT")
        assert info.state.messages == 1
        await nc.close()
    finally:
        server.stop()


def test_a_server_that_cannot_start_raises_and_leaves_nothing(root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server: EmbeddedServer = EmbeddedValkey(root / "valkey", taken.getsockname()[1])
        with pytest.raises(StoreError, match="valkey exited"):
            server.start(timeout=20)
    assert server.pid is None
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(root / "valkey") in (p.info["cmdline"] or [])]
    assert leftovers == []


def test_stop_is_idempotent_and_free_port_is_bindable(root: Path) -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    server = EmbeddedNats(root / "nats", port)
    server.stop()  # never started
    with server:
        assert server.pid is not None
    server.stop()
    assert server.pid is None


async def test_session_stores_answer_through_our_clients(migrated_database_url: str,
                                                        store_urls: StoreUrls) -> None:
    pool = await create_pool(migrated_database_url, max_size=2)
    try:
        details = {"key_id": "k1", "scopes": ["admin"], "price": "0.0006"}
        row = await pool.fetchrow(
            "INSERT INTO audit_log (actor, action, details) VALUES ('test', 'key.create', $1) "
            "RETURNING details, current_setting('TimeZone') AS zone", details)
        assert row is not None and row["details"] == details and row["zone"] == "UTC"
    finally:
        await pool.close()

    client = create_redis(store_urls.redis_url)
    try:
        key = f"test:{uuid.uuid4().hex}"
        assert await client.set(key, b"\x00bytes", ex=60)
        assert await client.get(key) == b"\x00bytes"
    finally:
        await client.aclose()
