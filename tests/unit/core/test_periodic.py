"""The background job shared by retention, invoicing and the hold reconciler
(services/core/periodic.py): it runs at start (or after a first pause), keeps running after a
failed run, and stops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.core.periodic import PeriodicJob


class Counting(PeriodicJob):
    name = "counting"

    def __init__(self, *, fail_first: bool = False, wait_first: bool = False) -> None:
        super().__init__(0.01, wait_first=wait_first)
        self.runs = 0
        self.fail_first = fail_first
        self.ran = asyncio.Event()

    async def run_once(self) -> int:
        self.runs += 1
        if self.fail_first and self.runs == 1:
            raise ConnectionError("the store is away")
        self.ran.set()
        return self.runs


async def test_a_failed_run_is_logged_and_the_next_one_catches_up(caplog: pytest.LogCaptureFixture) -> None:
    job = Counting(fail_first=True)
    with caplog.at_level(logging.WARNING):
        await job.start()
        await asyncio.wait_for(job.ran.wait(), 10)
        await job.stop()
    assert job.runs >= 2
    assert "counting postponed: ConnectionError" in caplog.text
    runs = job.runs
    await asyncio.sleep(0.05)
    assert job.runs == runs  # stopped


async def test_wait_first_pauses_before_the_first_run() -> None:
    job = Counting(wait_first=True)
    job._every_s = 30
    await job.start()
    await asyncio.sleep(0.05)
    assert job.runs == 0
    await job.stop()
    await job.stop()  # a second stop is harmless
