"""AuditConsumer.stop ends the consumer even when a cancellation inside nats-py's fetch() comes
back as a TimeoutError (nats-io/nats.py#373): CI once hung 85 minutes in a module teardown on it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from services.auth.audit import AuditConsumer
from services.core import consumer as consumer_module

pytestmark = pytest.mark.asyncio(loop_scope="session")


class SwallowingSubscription:
    """fetch() as nats-py 2.16 can behave: a cancellation while waiting turns into TimeoutError."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
        self.fetches += 1
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            raise TimeoutError from None
        raise TimeoutError


async def test_stop_ends_a_consumer_whose_fetch_swallows_cancellation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "STOP_GRACE_S", 0.5)
    consumer = AuditConsumer(nc=None, pool=None, wait_s=0.2)  # type: ignore[arg-type]
    subscription = SwallowingSubscription()

    async def subscribe() -> SwallowingSubscription:
        return subscription

    consumer._subscribe = subscribe  # type: ignore[method-assign]
    await consumer.start()
    while subscription.fetches < 2:  # noqa: ASYNC110 - polls a counter the consumer bumps
        await asyncio.sleep(0.01)
    task = consumer._task
    assert task is not None
    started = time.monotonic()
    await asyncio.wait_for(consumer.stop(), 10)
    assert task.done()
    assert time.monotonic() - started < 5


async def test_stop_waits_for_the_batch_in_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch being written is finished (and acknowledged) before the consumer ends."""
    written: list[int] = []
    release = asyncio.Event()

    class OneBatch:
        async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
            if written:
                await asyncio.sleep(timeout)
                raise TimeoutError
            return [object()]

    consumer = AuditConsumer(nc=None, pool=None, wait_s=0.2)  # type: ignore[arg-type]

    async def subscribe() -> OneBatch:
        return OneBatch()

    async def write(messages: list[Any]) -> int:
        await release.wait()
        written.append(len(messages))
        return len(messages)

    consumer._subscribe = subscribe  # type: ignore[method-assign]
    consumer.write = write  # type: ignore[method-assign]
    await consumer.start()
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert written == [1]
