"""A durable JetStream pull consumer that writes batches and acknowledges them after the write:
the audit trail (services/auth/audit.py) and the usage ledger (services/analytics/ledger.py).

A batch that fails to be written is not acknowledged: it is handed back at once (`nak`), so
JetStream delivers it again a second later, or after the consumer's ack wait when the consumer
itself died or NATS is away; writers are idempotent by event id, so a batch written twice changes
nothing. Several processes share one durable consumer and JetStream spreads the batches.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # how long stop() waits past one fetch


class PullConsumer:
    """Subclasses say what to subscribe to (`_subscribe`) and how to write a batch (`write`, which
    acknowledges what it wrote)."""

    name = "consumer"

    def __init__(self, *, batch: int = 100, wait_s: float = 1.0, linger_s: float = 0.0) -> None:
        self._batch = batch
        self._wait_s = wait_s
        # After a batch smaller than `batch`, wait this long before the next fetch, so that under
        # steady traffic batches grow (fewer, larger transactions) at the price of that much lag.
        self._linger_s = linger_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Ends the consumer after the batch in hand is written; never waits much past one fetch.

        Cancelling a task inside nats-py's `fetch()` is unreliable: the library may turn the
        cancellation into a TimeoutError (nats-io/nats.py#373), after which a loop would fetch on
        forever. So the loop checks a flag after every fetch, and cancelling is only the fallback.
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        done, _ = await asyncio.wait({task}, timeout=self._wait_s + stop_grace())
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=stop_grace())

    async def _subscribe(self) -> Any:
        raise NotImplementedError

    async def write(self, messages: list[Any]) -> int:
        raise NotImplementedError

    def idle(self) -> None:
        """Called when a fetch found nothing to deliver (nothing pending)."""

    async def _run(self) -> None:
        subscription = None
        while not self._stopping:
            messages: list[Any] = []
            try:
                if subscription is None:
                    subscription = await self._subscribe()
                try:
                    messages = await subscription.fetch(self._batch, timeout=self._wait_s)
                except (TimeoutError, nats.errors.TimeoutError):
                    self.idle()
                    continue
                await self.write(messages)
                if self._linger_s and len(messages) < self._batch and not self._stopping:
                    await asyncio.sleep(self._linger_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS or PostgreSQL away: unacknowledged events come back
                if self._stopping:
                    return
                log.warning("%s: %s; retrying", self.name, type(exc).__name__)
                await _hand_back(messages)
                await asyncio.sleep(1.0)


async def _hand_back(messages: list[Any]) -> None:
    """Asks JetStream to deliver an unwritten batch again now rather than after the ack wait;
    where NATS is away too, the ack wait brings it back all the same."""
    for message in messages:
        try:
            await message.nak()
        except Exception:  # noqa: BLE001 - best effort: redelivery happens anyway
            return


def stop_grace() -> float:
    """STOP_GRACE_S, read when needed (tests shorten it)."""
    return STOP_GRACE_S
