"""The Redis/Valkey client (redis-py asyncio). Values are bytes: callers decode what they store."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def create_redis(url: str) -> aioredis.Redis:
    """A pooled client for `url` (redis://host:port/db); connects lazily on first command.

    Timeouts are short because every Redis call sits on a request's hot path; a dropped
    connection is retried a few times with backoff before the error reaches the caller.
    """
    return aioredis.Redis.from_url(
        url, decode_responses=False, socket_connect_timeout=2.0, socket_timeout=2.0,
        health_check_interval=15, max_connections=256,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError])
