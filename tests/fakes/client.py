"""HTTP helpers the fakes' own tests share (their fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

import aiohttp


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POSTs `body` as JSON; returns the status and the raw answer."""
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.read()
