"""Authenticator and LastUsedRecorder with a fake key store (no I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from aggregator.auth.v1 import auth_service_pb2
from services.auth.authenticator import Authenticator
from services.auth.cache import PrincipalCache
from services.auth.keys import MAX_KEY_LENGTH, generate_key, hash_key
from services.auth.last_used import LastUsedRecorder
from services.auth.records import AuthRecord
from services.core.errors import GatewayError, Reason

SECRET = b"s" * 32
NOW = 2_000_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Writes:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    async def __call__(self, key_ids: Sequence[str]) -> None:
        self.batches.append(list(key_ids))
        if self.fail:
            raise ConnectionError("database down")


def setup(records: dict[str, AuthRecord], wall: Clock | None = None,
          recorder: LastUsedRecorder | None = None) -> tuple[Authenticator, list[str]]:
    lookups: list[str] = []

    async def load(key_hash: str) -> AuthRecord | None:
        lookups.append(key_hash)
        return records.get(key_hash)

    authenticator = Authenticator(SECRET, PrincipalCache(load), recorder=recorder,
                                  wall_clock=wall or Clock(NOW))
    return authenticator, lookups


def principal(key_id: str = "k1") -> auth_service_pb2.Principal:
    return auth_service_pb2.Principal(api_key_id=key_id, organization_id="o1", role="admin")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "sk_live_no_scheme"])
async def test_absent_or_non_bearer_credentials_are_missing_api_key(header: str | None) -> None:
    authenticator, lookups = setup({})
    with pytest.raises(GatewayError) as caught:
        await authenticator.authenticate(header)
    assert caught.value.reason is Reason.MISSING_API_KEY
    assert caught.value.http_status == 401
    assert caught.value.message.startswith("You didn't provide an API key.")
    assert lookups == []


async def test_a_known_key_yields_its_principal() -> None:
    key = generate_key()
    authenticator, _ = setup({hash_key(SECRET, key): AuthRecord(principal(), None)})
    found = await authenticator.authenticate(f"Bearer {key}")
    assert found.api_key_id == "k1" and found.role == "admin"


async def test_an_unknown_key_is_invalid_and_never_echoed() -> None:
    key = generate_key()
    authenticator, lookups = setup({})
    with pytest.raises(GatewayError) as caught:
        await authenticator.authenticate(f"Bearer {key}")
    error = caught.value
    assert error.reason is Reason.INVALID_API_KEY and error.message == "Incorrect API key provided."
    assert key not in error.to_json().decode() and key[:12] not in error.to_json().decode()
    assert lookups == [hash_key(SECRET, key)]  # looked up by HMAC, never by plaintext


async def test_oversized_keys_are_refused_without_a_lookup() -> None:
    authenticator, lookups = setup({})
    with pytest.raises(GatewayError) as caught:
        await authenticator.authenticate("Bearer " + "x" * (MAX_KEY_LENGTH + 1))
    assert caught.value.reason is Reason.INVALID_API_KEY
    assert lookups == []


async def test_expired_keys_fail_even_when_cached() -> None:
    key = generate_key()
    wall = Clock(NOW)
    authenticator, lookups = setup({hash_key(SECRET, key): AuthRecord(principal(), NOW + 10)}, wall)
    assert (await authenticator.authenticate(f"Bearer {key}")).api_key_id == "k1"
    wall.now = NOW + 10
    with pytest.raises(GatewayError) as caught:
        await authenticator.authenticate(f"Bearer {key}")
    assert caught.value.reason is Reason.INVALID_API_KEY
    assert len(lookups) == 1  # refused from the cache entry itself


async def test_each_use_is_noted_for_last_used_at() -> None:
    key = generate_key()
    writes = Writes()
    recorder = LastUsedRecorder(writes)
    authenticator, _ = setup({hash_key(SECRET, key): AuthRecord(principal("k9"), None)}, recorder=recorder)
    await authenticator.authenticate(f"Bearer {key}")
    await recorder.flush()
    assert writes.batches == [["k9"]]


async def test_recorder_writes_each_key_at_most_once_per_interval_in_batches() -> None:
    clock = Clock(0.0)
    writes = Writes()
    recorder = LastUsedRecorder(writes, min_interval_s=60, clock=clock)
    for key_id in ("a", "b", "a", "b", "a"):
        recorder.touch(key_id)
    await recorder.flush()
    assert writes.batches == [["a", "b"]]
    clock.now = 59
    recorder.touch("a")
    await recorder.flush()
    assert writes.batches == [["a", "b"]]
    clock.now = 61
    recorder.touch("a")
    recorder.touch("c")
    await recorder.close()
    assert writes.batches == [["a", "b"], ["a", "c"]]


async def test_recorder_failures_never_reach_the_request(caplog: pytest.LogCaptureFixture) -> None:
    writes = Writes(fail=True)
    recorder = LastUsedRecorder(writes)
    recorder.touch("a")
    await recorder.flush()
    assert writes.batches == [["a"]]
    assert "could not record last_used_at" in caplog.text


async def test_recorder_forgets_old_entries_when_full() -> None:
    clock = Clock(0.0)
    recorder = LastUsedRecorder(Writes(), min_interval_s=60, max_tracked=2, clock=clock)
    recorder.touch("a")
    recorder.touch("b")
    clock.now = 100
    recorder.touch("c")
    await recorder.flush()
    assert set(recorder._last) == {"c"}
    await asyncio.sleep(0)
