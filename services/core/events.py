"""Usage events out of the request path: JetStream first, a durable local outbox when it fails.

No usage is ever lost (docs/architecture.md §2.6). `publish` sends the event to `usage.<organization_id>`
with the request id as `Nats-Msg-Id`, so JetStream stores a republished event once (within the
stream's one-minute duplicate window; past it the consumers' unique request id still dedupes).
When NATS is down or slow, the event is written to one file per request in the outbox directory
(tmp file, fsync, rename, fsync of the directory) and a background task replays the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client

from aggregator.events.v1 import usage_event_pb2
from services.core import telemetry
from services.core.nats import USAGE_STREAM, USAGE_SUBJECT_PREFIX

_log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_SUBJECT_TOKEN = re.compile(r"[^.*>\s]+")
_SUFFIX = ".pb"


def outbox_file_name(request_id: str) -> str:
    """One file per request: its id when that is a safe file name, else a digest of it."""
    if _SAFE_NAME.fullmatch(request_id):
        return request_id + _SUFFIX
    return "sha256-" + hashlib.sha256(request_id.encode()).hexdigest() + _SUFFIX


class UsagePublisher:
    """Publishes UsageEvents to the JetStream stream USAGE, never losing one.

    `publish` waits at most `publish_timeout` for JetStream's acknowledgement, and not at all
    while the connection is known to be down. `start()` runs a task that replays the outbox
    every `replay_interval` seconds; `stop()` ends it and makes one last replay attempt.
    """

    outbox_name = "usage"  # the `outbox` label of the outbox metrics (docs/observability.md §1)

    def __init__(self, nc: Client, outbox_dir: Path, *, publish_timeout: float = 2.0,
                 replay_interval: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.outbox_dir = Path(outbox_dir)
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        self._publish_timeout = publish_timeout
        self._replay_interval = replay_interval
        self._replay_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def publish(self, event: usage_event_pb2.UsageEvent) -> None:
        """Publishes `event`, or keeps it in the outbox; raises only if neither is possible."""
        if not event.request_id:
            raise ValueError("a usage event needs a request_id (its deduplication key)")
        if not _SUBJECT_TOKEN.fullmatch(event.organization_id):
            raise ValueError("a usage event needs an organization_id usable as a subject token")
        payload = event.SerializeToString()
        try:
            if await self._send(event, payload):
                return
        except asyncio.CancelledError:
            # The caller was cancelled (a client went away mid-stream): the usage must survive it.
            self._write_outbox(event.request_id, payload)
            raise
        await asyncio.to_thread(self._write_outbox, event.request_id, payload)

    async def replay_outbox(self) -> int:
        """Publishes the outbox oldest first, deleting each file once acknowledged; returns how
        many were published. Stops at the first failure: the rest waits for the next attempt."""
        async with self._replay_lock:
            sent = 0
            pending = await asyncio.to_thread(self._pending_files)
            for path in pending:
                try:
                    payload = path.read_bytes()
                    event = self._decode(payload)
                except FileNotFoundError:
                    continue  # another worker sharing the directory replayed it
                except DecodeError:
                    _log.error("usage outbox file %s is unreadable; moved aside", path.name)
                    with contextlib.suppress(FileNotFoundError):
                        path.rename(path.with_suffix(".corrupt"))
                    continue
                if not await self._send(event, payload):
                    break
                path.unlink(missing_ok=True)
                sent += 1
            if sent:
                _log.info("replayed %d usage events from the outbox", sent)
            # What still waits (others' files included: workers share the directory), for the
            # "outbox growing" alert (docs/observability.md §2).
            telemetry.OUTBOX_EVENTS.labels(self.outbox_name).set(len(pending) - sent)
            return sent

    def _decode(self, payload: bytes) -> Any:
        """An outbox file's event (a subclass publishing another message type overrides it)."""
        return usage_event_pb2.UsageEvent.FromString(payload)

    def pending(self) -> int:
        """How many events wait in the outbox."""
        return len(self._pending_files())

    async def start(self) -> None:
        """Starts the background replay task (it first replays what an earlier run left)."""
        if self._task is None:
            self._task = asyncio.create_task(self._replay_forever(), name="usage-outbox-replay")

    async def stop(self) -> None:
        """Stops the replay task, then drains the outbox once; what cannot be sent stays on disk."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.replay_outbox()
        except Exception:
            _log.exception("draining the usage outbox failed; events stay on disk for the next run")

    async def _replay_forever(self) -> None:
        while True:
            try:
                await self.replay_outbox()
            except Exception:
                _log.exception("usage outbox replay failed; retrying")
            await asyncio.sleep(self._replay_interval)

    async def _send(self, event: usage_event_pb2.UsageEvent, payload: bytes) -> bool:
        """True once JetStream acknowledged the event; False when NATS is down, slow or refuses."""
        if not self._nc.is_connected:
            return False
        try:
            await self._js.publish(USAGE_SUBJECT_PREFIX + event.organization_id, payload,
                                   timeout=self._publish_timeout, stream=USAGE_STREAM,
                                   headers={"Nats-Msg-Id": event.request_id})
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            _log.warning("usage event %s not published (%s); kept in the outbox", event.request_id,
                         type(exc).__name__)
            return False
        return True

    def _write_outbox(self, request_id: str, payload: bytes) -> None:
        """Atomically and durably writes one event: a crash leaves either no file or a whole one."""
        final = self.outbox_dir / outbox_file_name(request_id)
        tmp = self.outbox_dir / f".{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        telemetry.OUTBOX_WRITES.labels(self.outbox_name).inc()
        dir_fd = os.open(self.outbox_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _pending_files(self) -> list[Path]:
        found: list[tuple[int, str]] = []
        for entry in os.scandir(self.outbox_dir):
            if entry.name.endswith(_SUFFIX):
                try:
                    found.append((entry.stat().st_mtime_ns, entry.path))
                except FileNotFoundError:
                    pass  # replayed by another worker meanwhile
        return [Path(path) for _, path in sorted(found)]
