"""Serve the release flow as a Prefect deployment, so releases start from the Prefect UI.

`python -m deployments.serve` registers the `release/release` deployment with the server in
PREFECT_API_URL and runs its flow runs in this process until stopped; no work pool needed.
Settings come from this process's environment (SHIPYARD_*), never from run parameters.
"""

from __future__ import annotations

from prefect import serve

from shipyard.flows.release import release


def main() -> None:
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
