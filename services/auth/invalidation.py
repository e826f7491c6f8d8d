"""Key invalidation events on core NATS subject `auth.keys.invalidate` (protobuf ApiKeyInvalidated).

Published whenever a key is created (to clear a negative cache entry for its hash) or revoked;
every process's PrincipalCache subscribes and drops the entry. Core NATS is at-most-once: a
process that is disconnected when an event is sent misses it, and its cache TTL bounds how long
it may still accept the key (see cache.py).
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf.message import DecodeError

from aggregator.events.v1 import key_event_pb2

log = logging.getLogger(__name__)

SUBJECT = "auth.keys.invalidate"
FLUSH_TIMEOUT_S = 1.0


def encode(key_id: str, key_hash: str) -> bytes:
    return key_event_pb2.ApiKeyInvalidated(api_key_id=key_id, key_hash=key_hash).SerializeToString()


def decode(data: bytes) -> key_event_pb2.ApiKeyInvalidated | None:
    """The event, or None (logged) when the payload is not one."""
    try:
        return key_event_pb2.ApiKeyInvalidated.FromString(data)
    except DecodeError:
        log.warning("ignoring a malformed message on %s", SUBJECT)
        return None


async def publish(nc: Any | None, key_id: str, key_hash: str) -> bool:
    """Tells every process that this key changed. Answers False (logged, never raised) when NATS
    is absent or unreachable: the change is stored already, and cache TTLs bound the staleness."""
    if nc is None:
        return False
    try:
        await nc.publish(SUBJECT, encode(key_id, key_hash))
        # Flushing makes "published" mean "handed to the server", so the 2 s promise holds.
        await nc.flush(timeout=FLUSH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any NATS failure degrades to TTL-bounded staleness
        log.warning("could not publish key invalidation for %s: %s", key_id, type(exc).__name__)
        return False
    return True
