"""Fixtures the fakes' own tests share. `fake` is the OpenAI fake (test_openai_upstream*.py); the
other fakes' test modules define their own `fake`, and `http` too when their client needs headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.openai_upstream import FakeOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(model_aliases={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
