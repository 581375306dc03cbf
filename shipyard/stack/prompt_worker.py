"""A Prefect worker that takes a run the moment it is scheduled, not at its next poll.

`python -m shipyard.stack.prompt_worker --pool NAME --type process|docker [--name N] [--limit L]`
runs Prefect's own worker of that type (`prefect worker start`'s class and loops: it polls
every `PREFECT_WORKER_QUERY_SECONDS` and heartbeats as usual) and, beside
it, subscribes to the server's event stream (`/api/events/out`, the websocket the UI's event
feed uses) for `prefect.flow-run.Scheduled` on its pool. Each such event makes the worker poll
at once, so a pushed commit's run is submitted within the event's delivery (milliseconds here)
instead of up to a polling interval later. The poll stays the fallback: a dropped event stream
(reconnected after a pause) or a run that became due later (a cron run created ahead of its
time) is taken at the next poll, as by `prefect worker start`. Submission is Prefect's own, so a
run seen by both paths is submitted once (the worker skips a run it is submitting), and other
pools' runs never wake it. With `--limit`, a slot that frees (a run ended, or another worker
took the run this one was submitting) makes it poll at once too, so a run scheduled while every
slot was taken does not wait for the next poll.

SIGTERM or SIGINT stops it: the worker's task group is cancelled, and a second signal kills it
at once (as `prefect worker start` does). Prefect's own handling turns SIGTERM into a SIGINT, on
which asyncio cancels the main task once; in tests run side by side that did not end the worker
("Received SIGINT" logged, then 15 minutes later its main thread idle in its event loop, no
child process left). A cancel scope's cancellation holds until the scope has exited.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

SCHEDULED = "prefect.flow-run.Scheduled"
RETRY_S = 5.0
WAKE_POLL_GAP_S = 0.5
log = logging.getLogger("shipyard.prompt_worker")


def for_pool(event: Any, pool: str) -> bool:
    """Whether `event` concerns a flow run of work pool `pool`."""
    return any(
        related.get("prefect.resource.role") == "work-pool"
        and related.get("prefect.resource.name") == pool
        for related in event.related
    )


async def react(worker: Any, pool: str) -> None:
    """Poll at once whenever a run of `pool` is scheduled; resubscribe after a failure."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    wanted = EventFilter(event=EventNameFilter(name=[SCHEDULED]))
    while True:
        try:
            async with get_events_subscriber(
                filter=wanted, reconnect_on_clean_close=True
            ) as events:
                async for event in events:
                    if for_pool(event, pool):
                        log.info("%s scheduled: polling now", event.resource.name)
                        await worker.get_and_submit_flow_runs()
        except Exception as e:  # the stream is an accelerator: the worker's poll goes on
            log.warning("event stream: %s; polling only for %.0f s", e, RETRY_S)
        await anyio.sleep(RETRY_S)


def poll_when_a_slot_frees(worker: Any) -> MemoryObjectReceiveStream[None]:
    """Wake-ups, one each time the worker frees one of its `--limit` slots: a run ended, or a
    submission was refused (another worker took the run first). A run scheduled while every
    slot was taken is then taken at once, not at the next poll.

    Prefect's worker has no hook for this; it frees slots in `_release_limit_slot` (Prefect
    3.8), which this wraps on the instance. `tests/test_prompt_worker.py` fails if that changes.
    """
    send, receive = anyio.create_memory_object_stream[None](1)
    release = worker._release_limit_slot

    def released(flow_run_id: Any) -> None:
        release(flow_run_id)
        with contextlib.suppress(anyio.WouldBlock):  # one wake-up pending is enough
            send.send_nowait(None)

    worker._release_limit_slot = released
    return receive


async def poll_on_wake(worker: Any, wakes: MemoryObjectReceiveStream[None]) -> None:
    """Poll once per wake-up, at most every WAKE_POLL_GAP_S: a claim that keeps failing (the
    API erring) frees its slot each time, and must not turn into a tight loop."""
    async for _ in wakes:
        log.info("a slot is free: polling now")
        try:
            await worker.get_and_submit_flow_runs()
        except Exception as e:  # as for an event: the worker's own poll goes on
            log.warning("polling after a freed slot: %s", e)
        await anyio.sleep(WAKE_POLL_GAP_S)


async def stop_on_signal(worker_scope: anyio.CancelScope, worker_type: str) -> None:
    """Cancel `worker_scope` at the first SIGTERM or SIGINT; kill this process at the second
    (the worker may wait, shielded, for a run's process to exit)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if worker_scope.cancel_called:
                print(f"Received {name} again: killing the worker", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            print(f"Received {name}: stopping the {worker_type} worker", flush=True)
            worker_scope.cancel()


async def serve(worker_type: str, pool: str, name: str | None, limit: int | None) -> None:
    from prefect.plugins import load_prefect_collections
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS
    from prefect.utilities.dispatch import lookup_type
    from prefect.workers.base import BaseWorker

    load_prefect_collections()  # the docker worker comes with prefect-docker
    try:
        worker_class: Any = lookup_type(BaseWorker, worker_type)  # a concrete subclass
    except KeyError:
        raise SystemExit(
            f"--type {worker_type}: no Prefect worker of that type is installed."
        ) from None
    worker = worker_class(
        name=name,
        work_pool_name=pool,
        limit=limit,
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )
    # The signal receiver sits outside the scope it cancels, so it still hears a second signal.
    async with anyio.create_task_group() as outer:
        stopping = anyio.CancelScope()
        outer.start_soon(stop_on_signal, stopping, worker_type)
        with stopping:
            async with anyio.create_task_group() as group:
                group.start_soon(react, worker, pool)
                if limit:
                    group.start_soon(poll_on_wake, worker, poll_when_a_slot_frees(worker))
                await worker.start(printer=print)
                group.cancel_scope.cancel()
        outer.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", required=True)
    parser.add_argument("--type", required=True, dest="worker_type")
    parser.add_argument("--name")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    anyio.run(serve, args.worker_type, args.pool, args.name, args.limit)


if __name__ == "__main__":
    main()
