"""Forward-only schema migrations: the numbered SQL files in `migrations/`, each applied once.

Every file runs in its own transaction and is recorded in `schema_migrations` in that same
transaction, so a failed file leaves no trace and is retried on the next run. A session-level
advisory lock serialises migrators: several workers starting at once apply each file once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import asyncpg

_log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Any constant of our own; every migrator of this schema must use the same one.
_ADVISORY_LOCK_KEY = 0x61676772_6D696772  # "aggrmigr"
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The migration files in order; raises ValueError on a misnamed file or a repeated number."""
    files = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    numbers: set[str] = set()
    for path in files:
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_verb_noun.sql")
        if match.group(1) in numbers:
            raise ValueError(f"migration number {match.group(1)} is used twice")
        numbers.add(match.group(1))
    return files


async def apply_migrations(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Applies every pending migration and returns the versions (file stems) applied, in order."""
    files = migration_files(directory)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        try:
            return await _apply_pending(conn, files)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection, files: list[Path]) -> list[str]:
    await conn.execute(_CREATE_TABLE)
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    applied = {r["version"]: r["checksum"] for r in rows}
    done: list[str] = []
    for path in files:
        sql = path.read_text()
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        version = path.stem
        if version in applied:
            if applied[version] != checksum:
                # Forward-only: an applied file is history. Say so, but do not block start-up.
                _log.warning("migration %s changed after it was applied; add a new one instead", version)
            continue
        async with conn.transaction():
            # Without arguments asyncpg uses the simple query protocol: many statements per call.
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                               version, checksum)
        _log.info("applied migration %s", version)
        done.append(version)
    return done
