"""Lifecycle conformance: the client leaving closes the upstream request; ids are forwarded."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import orjson
import pytest

from tests.conformance.checks import user
from tests.conformance.conftest import Harness


@pytest.mark.conformance("cancellation")
async def test_closing_the_stream_closes_the_upstream(harness: Harness) -> None:
    harness.fake.hold_streams()
    call = harness.chat_request({"messages": [user("a b c d")], "stream": True})
    async with aclosing(harness.stream(call)) as s:
        await anext(s)
    await harness.fake.wait_for_disconnect(within_s=5.0)
    assert harness.fake.disconnects == 1


@pytest.mark.conformance("cancellation")
async def test_cancelling_the_caller_closes_the_upstream(harness: Harness) -> None:
    harness.fake.hold_streams()
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in harness.stream(harness.chat_request({"messages": [user("a b c d")], "stream": True})):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5.0)
    task.cancel()  # the client went away while the upstream was still generating
    with pytest.raises(asyncio.CancelledError):
        await task
    await harness.fake.wait_for_disconnect(within_s=5.0)
    assert harness.fake.disconnects == 1


@pytest.mark.conformance("request_id")
async def test_request_id_is_forwarded(harness: Harness) -> None:
    await harness.chat({"messages": [user("hi")]}, request_id="req-0123456789")
    assert harness.sent().request_id() == "req-0123456789"


@pytest.mark.conformance("request_id")
async def test_extensions_are_not_forwarded(harness: Harness) -> None:
    await harness.chat({"messages": [user("hi")], "models": ["fallback-model"],
                        "provider": {"order": ["upstream-a"], "allow_fallbacks": False}})
    sent = harness.sent()
    # Nothing of them anywhere in the upstream's body, whatever its shape.
    body = orjson.dumps(sent.body)
    assert b'"models"' not in body and b'"provider"' not in body
    assert b"fallback-model" not in body and b"upstream-a" not in body and b"allow_fallbacks" not in body
    assert sent.upstream_model() == "gpt-4o-mini"
