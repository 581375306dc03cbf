"""eager: an awaitable that need not wait is finished at once; one that must is finished when
awaited, and can be cancelled (timed out) like any other."""

from __future__ import annotations

import asyncio

import pytest

from shipyard_serving.eager import Pending, eager

pytestmark = pytest.mark.unit


async def at_once() -> str:
    return "now"


async def after(waits: int) -> str:
    for _ in range(waits):
        await asyncio.sleep(0.001)
    return "later"


def test_an_awaitable_that_never_waits_gives_its_result_at_once() -> None:
    assert eager(at_once()) == "now"


def test_an_awaitable_that_waits_is_finished_by_awaiting_it() -> None:
    async def run() -> str:
        pending = eager(after(3))
        assert isinstance(pending, Pending)
        return await pending

    assert asyncio.run(run()) == "later"


def test_a_future_is_an_awaitable_too() -> None:
    async def run() -> int:
        future = asyncio.get_running_loop().create_future()
        pending = eager(future)
        assert isinstance(pending, Pending)
        asyncio.get_running_loop().call_later(0.001, future.set_result, 7)
        return await pending

    assert asyncio.run(run()) == 7


def test_a_pending_awaitable_times_out_and_is_cancelled_inside() -> None:
    cancelled = []

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def run() -> None:
        pending = eager(forever())
        async with asyncio.timeout(0.01):
            await pending

    with pytest.raises(TimeoutError):
        asyncio.run(run())
    assert cancelled == [True]
