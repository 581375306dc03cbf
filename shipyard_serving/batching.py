"""Adaptive micro-batching: concurrent requests share one ONNX Runtime call.

A request waits for company only while other requests are already in flight, and never
longer than `max_delay`; a lone client is served at once. Inference runs in a worker thread
(ONNX Runtime releases the GIL), so the event loop keeps parsing the next requests meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class MicroBatcher:
    def __init__(
        self,
        predict: Predict,
        max_rows: int,
        max_delay_s: float,
        inflight: Callable[[], int],
        on_batch: Callable[[int], None],
    ) -> None:
        self._predict, self._max_rows, self._max_delay = predict, max_rows, max_delay_s
        self._inflight, self._on_batch = inflight, on_batch
        self._queue: asyncio.Queue[
            tuple[np.ndarray, asyncio.Future[tuple[np.ndarray, np.ndarray]]]
        ] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._carry: tuple[np.ndarray, asyncio.Future[tuple[np.ndarray, np.ndarray]]] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = (
            asyncio.get_running_loop().create_future()
        )
        await self._queue.put((x, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first, self._carry = self._carry, None
            batch = [first if first is not None else await self._queue.get()]
            rows = len(batch[0][0])
            deadline = loop.time() + self._max_delay
            while rows < self._max_rows:
                if self._queue.empty():
                    # Others in flight may join soon; a lone request is not held back.
                    remaining = deadline - loop.time()
                    if self._inflight() <= len(batch) or remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    item = self._queue.get_nowait()
                if rows + len(item[0]) > self._max_rows:
                    self._carry = item  # it starts the next batch
                    break
                batch.append(item)
                rows += len(item[0])
            await self._infer(batch, rows)

    async def _infer(
        self,
        batch: list[tuple[np.ndarray, asyncio.Future[tuple[np.ndarray, np.ndarray]]]],
        rows: int,
    ) -> None:
        x = batch[0][0] if len(batch) == 1 else np.concatenate([b[0] for b in batch])
        try:
            labels, probabilities = await asyncio.to_thread(self._predict, x)
        except Exception as e:  # one bad batch must not stop the batcher
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        self._on_batch(rows)
        start = 0
        for part, future in batch:
            end = start + len(part)
            if not future.done():  # its request may have timed out
                future.set_result((labels[start:end], probabilities[start:end]))
            start = end
