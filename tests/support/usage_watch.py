"""Watching stream USAGE from a test: an ordered consumer opened before the request, since the
ledger removes an event from the stream a second or two after it is published (docs/ledger.md §1)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.js.api import DeliverPolicy

from aggregator.events.v1 import usage_event_pb2 as ev
from services.core.config import StoreUrls
from services.core.nats import USAGE_STREAM


class UsageWatch:
    """An ordered consumer of stream USAGE, opened before the request. The ledger acknowledges an
    event a second or two after it is published and the stream (interest retention) drops it then,
    so a consumer opened after the request could find nothing; this one wants every new event."""

    def __init__(self, store_urls: StoreUrls) -> None:
        self._url = store_urls.nats_url
        self._nc: nats.NATS | None = None
        self._subscription: Any = None
        self._seen: list[Any] = []  # every message received, for several look-ups

    async def __aenter__(self) -> UsageWatch:
        self._nc = await nats.connect(self._url)
        self._subscription = await self._nc.jetstream().subscribe(
            "usage.>", stream=USAGE_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._nc is not None
        await self._subscription.unsubscribe()
        await self._nc.close()

    async def events_for(self, request_id: str, timeout_s: float = 5.0) -> list[ev.UsageEvent]:
        """Every event seen whose Nats-Msg-Id is `request_id`: waits for the first, then for a
        quiet half second (a duplicate would show then)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                self._seen.append(await self._subscription.next_msg(timeout=0.5))
                continue
            except (TimeoutError, nats.errors.TimeoutError):
                pass
            found = [ev.UsageEvent.FromString(message.data) for message in self._seen
                     if (message.headers or {}).get("Nats-Msg-Id") == request_id]
            if found or asyncio.get_running_loop().time() > deadline:
                return found
