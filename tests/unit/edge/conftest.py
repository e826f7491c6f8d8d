"""Edge unit tests drive the pipeline directly, as an inference RPC would: declared `inference`
(the servicers' `@requires(INFERENCE)`, services/auth/permissions.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from services.auth.permissions import INFERENCE
from services.core.rpc import declared_permission


@pytest.fixture(autouse=True)
async def _inference_rpc() -> AsyncIterator[None]:
    token = declared_permission.set(INFERENCE)
    yield
    with contextlib.suppress(ValueError):  # the test may have run in a copy of the context
        declared_permission.reset(token)
