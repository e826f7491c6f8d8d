"""The response cache (docs/limits.md, "Response cache"): exact-match answers of chat and
completions, replayed byte for byte.

Opt-in only: a request asks with `x-aggregator-cache: use`, or its key has `cache` on; answers
with a non-zero temperature are not deterministic, so nothing is cached unless asked.
`Cache-Control: no-cache` skips the lookup (the fresh answer is stored), `no-store` skips both;
either way the answer says `x-cache: MISS`.

An entry is keyed by organization, model and the SHA-256 of the request's deterministic protobuf
encoding (what the client sent, whatever its JSON key order or spacing), so organizations never
share entries. It holds the adapter's events exactly as they were streamed (OpenAI's bytes and the
usage), so a hit replays the same body, streamed or not. Entries live `cache_ttl_s` of the model
(config file, default 300 s) and are stored only for answers that completed, up to
MAX_ENTRY_BYTES.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aggregator.adapter.v1 import adapter_service_pb2 as adapter_pb
from services.core.rpc import metadata_value

log = logging.getLogger(__name__)

ASK_HEADER = "x-aggregator-cache"
DEFAULT_TTL_S = 300
MAX_ENTRY_BYTES = 4 * 1024 * 1024
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a request asked of the cache: its entry's key, whether it may read and store."""

    key: str
    read: bool
    write: bool
    ttl_s: int


@dataclass(slots=True)
class Filling:
    """The events of a miss being answered, kept until they are stored or turn out too large."""

    lookup: Lookup
    events: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, event: adapter_pb.ChatResponse) -> None:
        if self.size > MAX_ENTRY_BYTES:
            return
        data = event.SerializeToString()
        self.events.append(data)
        self.size += len(data) + _LENGTH.size


def _glob(text: str) -> str:
    """`text` matched literally in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def encode(events: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in events)


def decode(blob: bytes) -> list[adapter_pb.ChatResponse]:
    events, offset = [], 0
    while offset < len(blob):
        (length,) = _LENGTH.unpack_from(blob, offset)
        offset += _LENGTH.size
        events.append(adapter_pb.ChatResponse.FromString(blob[offset : offset + length]))
        offset += length
    return events


class ResponseCache:
    """Exact-match answers in Redis, per organization and model."""

    def __init__(self, redis: aioredis.Redis, ttls: Mapping[str, int] | None = None,
                 default_ttl_s: int = DEFAULT_TTL_S) -> None:
        self._redis = redis
        self._ttls = dict(ttls or {})
        self._default_ttl_s = default_ttl_s

    def lookup(self, context: Any, principal: Any, request: Any) -> Lookup | None:
        """The request's cache entry, when it asked for the cache (or its key did)."""
        asked = (metadata_value(context, ASK_HEADER) or "").strip().lower() == "use" or bool(
            getattr(principal, "cache", False))
        if not asked:
            return None
        control = (metadata_value(context, "cache-control") or "").lower()
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        key = f"cache:{principal.organization_id}:{request.model}:{digest}"
        stored = "no-store" not in control
        return Lookup(key, read=stored and "no-cache" not in control, write=stored,
                      ttl_s=self._ttls.get(request.model, self._default_ttl_s))

    async def get(self, lookup: Lookup) -> list[adapter_pb.ChatResponse] | None:
        """The stored answer's events; None on a miss (or while Redis is away: the request goes on)."""
        if not lookup.read:
            return None
        try:
            blob = await self._redis.get(lookup.key)
        except RedisError as exc:
            log.warning("response cache unavailable (%s): a miss", type(exc).__name__)
            return None
        if not isinstance(blob, bytes):  # the client never decodes (services/core/redis.py)
            return None
        try:
            return decode(blob)
        except Exception:  # noqa: BLE001 - a damaged entry is a miss, and goes
            log.warning("dropping an unreadable response-cache entry")
            await self._redis.delete(lookup.key)
            return None

    async def put(self, filling: Filling) -> None:
        """Stores a completed answer; an oversized one is not stored."""
        if not filling.lookup.write or filling.size > MAX_ENTRY_BYTES or not filling.events:
            return
        try:
            await self._redis.set(filling.lookup.key, encode(filling.events), ex=filling.lookup.ttl_s)
        except RedisError as exc:
            log.warning("response not cached, Redis unavailable (%s)", type(exc).__name__)

    async def invalidate(self, organization_id: str | None = None, model: str | None = None) -> int:
        """Deletes the entries of an organization and/or model (everything when neither is given);
        answers how many went."""
        organization = _glob(organization_id) if organization_id else "*"
        pattern = f"cache:{organization}:{_glob(model) if model else '*'}:*"
        removed = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += await self._redis.unlink(*batch)
                batch.clear()
        if batch:
            removed += await self._redis.unlink(*batch)
        return removed
