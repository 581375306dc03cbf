"""Serve the release flow as a Prefect deployment, so releases start from the Prefect UI.

`python -m shipyard.deployments.serve` registers the `release/release` deployment with the server
in PREFECT_API_URL and runs its flow runs in this process until stopped; no work pool needed.
Settings come from this process's environment (SHIPYARD_*), never from run parameters.

A server where `prefect deploy` or `shipyard stack up` already registered `release/release` for a
work pool is refused: serving upserts the deployment by name, and the worker's deployment would
lose its pull steps and storage, so the runs of either would crash loading the flow.
"""

from __future__ import annotations

import sys

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from shipyard.flows.release import release

NAME = "release/release"


def taken_by_a_pool() -> str | None:
    """The work pool `release/release` is registered for on this server, if any."""
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(NAME)
        except ObjectNotFound:
            return None
    return deployment.work_pool_name


def main() -> None:
    pool = taken_by_a_pool()
    if pool:
        sys.exit(
            f"error: the Prefect server at {PREFECT_API_URL.value()} already has {NAME} for the "
            f"work pool {pool!r} (registered by `prefect deploy` or `shipyard stack up`); a "
            "worker on that pool runs releases already. Serving would take the deployment over "
            "and break the worker's runs: start releases on the pool instead, or remove it first "
            f"(`prefect deployment delete {NAME}`)."
        )
    serve(
        release.to_deployment(  # type: ignore[arg-type]  # sync call: not a coroutine
            name="release",
            tags=["shipyard", "release"],
            description="Release a model project (directory or git URL) up to registration.",
            parameters={"source": "examples/digits-sklearn"},
        )
    )


if __name__ == "__main__":
    main()
