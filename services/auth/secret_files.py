"""Secrets kept in the data dir: the server secret that keys the API-key HMAC, and the bootstrap
admin key file. Files are created once, atomically and with mode 0600, so that several worker
processes starting together agree on one value and none ever reads a half-written file.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SECRET_ENV = "AGGREGATOR_SECRET"
SECRET_FILE = "server-secret"
SECRET_BYTES = 32
_HEX = re.compile(r"[0-9a-fA-F]+")
_MIN_RAW_SECRET = 16


def parse_secret(value: str) -> bytes:
    """`AGGREGATOR_SECRET`: hex (even length, at least 32 digits) is decoded; anything else is
    taken as raw UTF-8 bytes."""
    value = value.strip()
    if len(value) >= 32 and len(value) % 2 == 0 and _HEX.fullmatch(value):
        return bytes.fromhex(value)
    if len(value) < _MIN_RAW_SECRET:
        log.warning("%s is shorter than %d characters; use 32 random bytes", SECRET_ENV, _MIN_RAW_SECRET)
    return value.encode()


def write_once(path: Path, content: str) -> bool:
    """Creates `path` holding `content` (mode 0600) unless it already exists.

    Returns True when this call created it. The content is written to a private temporary file
    first and hard-linked into place, so the file appears complete or not at all, and of two
    racing writers exactly one wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def load_server_secret(data_dir: Path | str, environ: Mapping[str, str] | None = None) -> bytes:
    """The server secret: env `AGGREGATOR_SECRET` (hex or raw) if set, else `<data-dir>/server-secret`
    (32 random bytes stored as hex, created once with mode 0600).

    Every process of a deployment must use the same secret, or keys hashed by one are unknown to
    the others: split deployments set `AGGREGATOR_SECRET`; `up` shares its data dir.
    """
    env = os.environ if environ is None else environ
    value = env.get(SECRET_ENV, "").strip()
    if value:
        return parse_secret(value)
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        write_once(path, secrets.token_hex(SECRET_BYTES) + "\n")
    stored = path.read_text().strip()
    if not stored:
        # Not regenerated silently: a new secret would invalidate every stored key.
        raise RuntimeError(f"{path} is empty; restore it, or delete it to invalidate every API key")
    return parse_secret(stored)
