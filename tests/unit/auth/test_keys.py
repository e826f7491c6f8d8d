"""Key format, HMAC, Authorization parsing, the server secret and password hashing (no network)."""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
from pathlib import Path

import pytest

from services.auth.keys import (
    KEY_PREFIX,
    PREFIX_LENGTH,
    generate_key,
    hash_key,
    key_prefix,
    parse_bearer,
    verify_key,
)
from services.auth.passwords import hash_password, verify_password
from services.auth.secret_files import SECRET_ENV, load_server_secret, parse_secret, write_once

SECRET = b"0123456789abcdef0123456789abcdef"


def test_generated_keys_are_sk_live_plus_43_url_safe_chars_and_unique() -> None:
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"sk_live_[A-Za-z0-9_-]{43}", key), key


def test_prefix_is_the_first_12_characters() -> None:
    key = generate_key()
    assert key_prefix(key) == key[:12]
    assert PREFIX_LENGTH == 12 and key_prefix(key).startswith(KEY_PREFIX)


def test_hash_is_hex_hmac_sha256_of_the_key_under_the_secret() -> None:
    key = generate_key()
    expected = hmac.new(SECRET, key.encode(), hashlib.sha256).hexdigest()
    assert hash_key(SECRET, key) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert hash_key(b"another secret", key) != expected
    assert key not in expected


def test_verify_key_accepts_only_the_matching_key() -> None:
    key = generate_key()
    stored = hash_key(SECRET, key)
    assert verify_key(SECRET, key, stored)
    assert not verify_key(SECRET, key + "x", stored)
    assert not verify_key(b"wrong", key, stored)


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer sk_live_abc", "sk_live_abc"),
    ("bearer sk_live_abc", "sk_live_abc"),
    ("BEARER   sk_live_abc  ", "sk_live_abc"),
    ("  Bearer sk_live_abc", "sk_live_abc"),
    (None, None),
    ("", None),
    ("Bearer", None),
    ("Bearer    ", None),
    ("Basic dXNlcjpwYXNz", None),
    ("sk_live_abc", None),
    ("Token sk_live_abc", None),
])
def test_parse_bearer(header: str | None, expected: str | None) -> None:
    assert parse_bearer(header) == expected


def test_secret_from_env_hex_is_decoded_and_raw_is_taken_as_bytes(tmp_path: Path) -> None:
    hex_secret = "ab" * 32
    assert load_server_secret(tmp_path, {SECRET_ENV: hex_secret}) == bytes.fromhex(hex_secret)
    raw = "a raw passphrase that is long"
    assert load_server_secret(tmp_path, {SECRET_ENV: raw}) == raw.encode()
    assert parse_secret("abcd") == b"abcd"  # too short to be taken as hex
    assert not (tmp_path / "server-secret").exists()


def test_secret_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_server_secret(tmp_path / "data", {})
    path = tmp_path / "data" / "server-secret"
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_server_secret(tmp_path / "data", {}) == first
    assert load_server_secret(tmp_path / "data", {SECRET_ENV: ""}) == first
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["server-secret"]  # no temporary files left


def test_empty_secret_file_is_an_error_not_a_silent_new_secret(tmp_path: Path) -> None:
    (tmp_path / "server-secret").write_text("")
    with pytest.raises(RuntimeError, match="empty"):
        load_server_secret(tmp_path, {})


def test_write_once_keeps_the_first_content(tmp_path: Path) -> None:
    path = tmp_path / "admin-key"
    assert write_once(path, "first\n") is True
    assert write_once(path, "second\n") is False
    assert path.read_text() == "first\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passwords_are_argon2id_hashed_and_verified() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert verify_password(stored, "correct horse battery")
    assert not verify_password(stored, "wrong password")
    assert not verify_password("not a hash", "correct horse battery")
