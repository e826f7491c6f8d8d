"""People's sessions: refresh-token rotation with reuse detection, and the revoked-session check
every access token goes through (docs/reference.md §4 "People").

* A login opens a session; its refresh tokens are opaque (`rt_` + 32 random bytes) and stored only
  as a hex HMAC-SHA256 keyed by the server secret, like API keys (keys.py). Exchanging one spends
  it and issues the next; presenting a spent one again means it was copied, so the whole session
  (the token family) is revoked.
* Revocation is pushed like key invalidation (invalidation.py): the revoking process publishes the
  session id on core NATS subject `auth.sessions.revoke`, and every process marks the session
  revoked in memory at once. `SessionStates` answers "is this session revoked?" from memory; a
  session it has not seen is read from PostgreSQL once and kept `ttl_s`, so a warm check touches
  no database. After a NATS reconnect the memory is cleared (events may have been missed).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from google.protobuf.message import DecodeError

from aggregator.events.v1 import session_event_pb2
from services.auth.keys import hash_key
from services.core.nats import unsubscribe_quietly

log = logging.getLogger(__name__)

SUBJECT = "auth.sessions.revoke"
FLUSH_TIMEOUT_S = 1.0
SESSION_TTL = timedelta(days=30)
REFRESH_PREFIX = "rt_"
MAX_REFRESH_TOKEN_LENGTH = 128
REUSE = "refresh_token_reuse"
LOGOUT = "logout"


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Exchange:
    """What presenting a refresh token found. `reused`: it was already spent (the session is now
    revoked); `session_id` is empty when the token is unknown or its session is over."""

    session_id: str = ""
    user_id: str = ""
    refresh_token: str = ""
    reused: bool = False


class SessionStore:
    """Sessions and refresh tokens in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, secret: bytes) -> None:
        self._pool = pool
        self._secret = secret

    def _hash(self, token: str) -> str:
        return hash_key(self._secret, token)

    async def open(self, user_id: str, organization_id: str) -> tuple[str, str]:
        """A new session for a user who just signed in: (session id, first refresh token)."""
        token = new_refresh_token()
        async with self._pool.acquire() as conn, conn.transaction():
            session_id = await conn.fetchval(
                "INSERT INTO auth_sessions (user_id, organization_id, expires_at) "
                "VALUES ($1::uuid, $2::uuid, now() + $3::interval) RETURNING id",
                user_id, organization_id, SESSION_TTL)
            await conn.execute("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)",
                               self._hash(token), session_id)
            await conn.execute("UPDATE users SET last_login_at = now() WHERE id = $1::uuid", user_id)
        return str(session_id), token

    async def exchange(self, token: str) -> Exchange:
        """Spends `token` and issues the next one of its session, in one transaction."""
        if not token.startswith(REFRESH_PREFIX) or len(token) > MAX_REFRESH_TOKEN_LENGTH:
            return Exchange()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT r.session_id, r.used_at, s.user_id, s.revoked_at, s.expires_at > now() AS live "
                "FROM refresh_tokens r JOIN auth_sessions s ON s.id = r.session_id "
                "WHERE r.token_hash = $1 FOR UPDATE OF r, s", self._hash(token))
            if row is None or row["revoked_at"] is not None or not row["live"]:
                return Exchange()
            session_id = str(row["session_id"])
            if row["used_at"] is not None:
                await _revoke(conn, session_id, REUSE)
                return Exchange(session_id=session_id, reused=True)
            following = new_refresh_token()
            await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
                               self._hash(token))
            await conn.execute("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2::uuid)",
                               self._hash(following), session_id)
        return Exchange(session_id=session_id, user_id=str(row["user_id"]), refresh_token=following)

    async def session_of(self, token: str) -> str | None:
        """The live session a refresh token (spent or not) belongs to."""
        if not token.startswith(REFRESH_PREFIX) or len(token) > MAX_REFRESH_TOKEN_LENGTH:
            return None
        session_id = await self._pool.fetchval(
            "SELECT r.session_id FROM refresh_tokens r JOIN auth_sessions s ON s.id = r.session_id "
            "WHERE r.token_hash = $1 AND s.revoked_at IS NULL", self._hash(token))
        return None if session_id is None else str(session_id)

    async def owner(self, session_id: str) -> dict[str, str] | None:
        """The user (or OAuth client) and organization of a session: `{"id", "organization_id"}`."""
        row = await self._pool.fetchrow(
            "SELECT coalesce(user_id, oauth_client_id) AS user_id, organization_id FROM auth_sessions "
            "WHERE id = $1::uuid", session_id)
        if row is None:
            return None
        return {"id": str(row["user_id"]), "organization_id": str(row["organization_id"])}

    async def revoke(self, session_id: str, reason: str) -> None:
        async with self._pool.acquire() as conn:
            await _revoke(conn, session_id, reason)

    async def is_revoked(self, session_id: str) -> bool:
        """Whether the session is revoked, over, or unknown."""
        live = await self._pool.fetchval(
            "SELECT revoked_at IS NULL AND expires_at > now() FROM auth_sessions WHERE id = $1::uuid",
            session_id)
        return live is not True


async def live_sessions(pool: Any, user_id: str) -> list[str]:
    """The ids of a user's sessions that are neither revoked nor over."""
    rows = await pool.fetch("SELECT id FROM auth_sessions WHERE user_id = $1::uuid AND revoked_at IS NULL "
                            "AND expires_at > now()", user_id)
    return [str(row["id"]) for row in rows]


async def revoke_user_sessions(pool: Any, user_id: str, reason: str) -> list[str]:
    """Revokes every live session of a user (a new role or password); answers their ids, for
    `publish_revocation`."""
    rows = await pool.fetch("UPDATE auth_sessions SET revoked_at = now(), revoked_reason = $2 "
                            "WHERE user_id = $1::uuid AND revoked_at IS NULL RETURNING id", user_id, reason)
    return [str(row["id"]) for row in rows]


async def _revoke(conn: Any, session_id: str, reason: str) -> None:
    await conn.execute("UPDATE auth_sessions SET revoked_at = now(), revoked_reason = $2 "
                       "WHERE id = $1::uuid AND revoked_at IS NULL", session_id, reason)


class SessionStates:
    """Per process: which sessions are revoked. Memory first; PostgreSQL for a session not seen
    within `ttl_s`; NATS events mark sessions revoked at once."""

    def __init__(self, store: SessionStore, *, ttl_s: float = 60.0, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        # session id -> (until when the answer holds, revoked?). A revocation is kept for good
        # (until evicted): a revoked session never comes back.
        self._states: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._generation = 0
        self._subscription: Any = None

    def _remember(self, session_id: str, revoked: bool) -> None:
        until = float("inf") if revoked else self._clock() + self._ttl_s
        self._states[session_id] = (until, revoked)
        self._states.move_to_end(session_id)
        while len(self._states) > self._max_entries:
            self._states.popitem(last=False)

    async def is_revoked(self, session_id: str) -> bool:
        hit = self._states.get(session_id)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        generation = self._generation
        revoked = await self._store.is_revoked(session_id)
        # A revocation that arrived while we read must not be overwritten by the older answer.
        if generation == self._generation or revoked:
            self._remember(session_id, revoked)
        return revoked

    def mark_revoked(self, session_id: str) -> None:
        self._generation += 1
        self._remember(session_id, True)

    def clear(self) -> None:
        """Forgets everything, e.g. after a NATS reconnect during which events may have been missed."""
        self._generation += 1
        self._states.clear()

    async def subscribe(self, nc: Any) -> None:
        self._subscription = await nc.subscribe(SUBJECT, cb=self._on_event)
        await nc.flush(timeout=FLUSH_TIMEOUT_S * 5)

    async def _on_event(self, msg: Any) -> None:
        try:
            event = session_event_pb2.SessionRevoked.FromString(msg.data)
        except DecodeError:
            log.warning("ignoring a malformed message on %s", SUBJECT)
            return
        if event.session_id:
            self.mark_revoked(event.session_id)

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        await unsubscribe_quietly(subscription)


async def publish_revocation(nc: Any | None, session_id: str) -> bool:
    """Tells every process the session ended; False (logged, never raised) when NATS is absent or
    unreachable: the revocation is stored, and other processes see it within their `ttl_s`."""
    if nc is None:
        return False
    try:
        await nc.publish(SUBJECT, session_event_pb2.SessionRevoked(session_id=session_id).SerializeToString())
        await nc.flush(timeout=FLUSH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any NATS failure degrades to TTL-bounded staleness
        log.warning("could not publish the revocation of session %s: %s", session_id, type(exc).__name__)
        return False
    return True
