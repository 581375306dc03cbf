"""Rollout benchmark: what each strategy costs the clients of a live endpoint, side by side.

Run: `make bench-rollout` (after `shipyard stack up`). It starts its own Prefect server,
releases the reference scikit-learn project twice (two training seeds, two registered versions
with pushed images), deploys the first, then rolls the endpoint between the two versions with
`recreate`, `blue-green` and `canary` in turn (each strategy `ROUNDS` times), while a steady
two-client load (`tests/support/load.py`, 127.0.0.1 only, bounded) runs against the stable
endpoint. Per strategy: rollout time, requests sent, requests failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # tasks run bare here

from prefect.testing.utilities import prefect_test_harness

from shipyard import registry
from shipyard.deploy import containers
from shipyard.deploy.endpoint import Strategy, undeploy
from shipyard.flows.release import release
from shipyard.flows.rollout import rollout, target_of_version
from shipyard.manifest import DeployPolicy
from shipyard.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MODEL = "digits-sklearn"
ROUNDS = 2
STRATEGIES: tuple[Strategy, ...] = ("recreate", "blue-green", "canary")


def under_load(url: str, action: Callable[[], object]) -> tuple[float, dict[str, Any]]:
    """Run `action()` while two clients send one-row requests to `url`; its time and the counts."""
    load = subprocess.Popen(
        [sys.executable, "-m", "tests.support.load", url, MODEL, "--seconds", "300"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert load.stdout is not None and load.stdout.readline().strip() == b"started"
    time.sleep(1)  # the clients are under way before anything moves
    start = time.perf_counter()
    try:
        action()
    finally:
        seconds = time.perf_counter() - start
        time.sleep(1)
        load.terminate()
        out, _ = load.communicate(timeout=30)
    return seconds, json.loads(out.splitlines()[-1])


def main() -> None:
    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp) / "state", latency_runs=50)
        project = Path(tmp) / "project"
        shutil.copytree(ROOT / "examples" / MODEL, project)
        port = containers.free_port("127.0.0.1")
        manifest = project / "shipyard.yaml"
        text = manifest.read_text().split("\ndeploy:")[0]
        manifest.write_text(text + f"\ndeploy: {{port: {port}}}\n")
        first = release(source=str(project), settings=settings)
        manifest.write_text(manifest.read_text().replace("seed: 0", "seed: 1"))
        second = release(source=str(project), until="push", settings=settings)
        mlflow = registry.client(settings)
        targets = [
            target_of_version(settings, MODEL, mlflow.get_model_version(MODEL, v))
            for v in (first.version, second.version)
        ]
        # Canary steps and hold times as a user would set them, shortened for a benchmark.
        policy = DeployPolicy(
            port=port, canary_steps=[10, 50, 100], step_seconds=3, keep_blue_seconds=3
        )
        rows = []
        turn = 1
        try:
            for strategy in STRATEGIES:
                for _ in range(ROUNDS):
                    target = targets[turn % 2]
                    turn += 1
                    seconds, counts = under_load(
                        str(first.endpoint), partial(rollout, target, strategy, policy, settings)
                    )
                    rows.append((strategy, seconds, counts))
                    print(f"{strategy}: {seconds:.1f} s, {counts}", file=sys.stderr)
        finally:
            undeploy(settings, MODEL)
    print(f"\n{'strategy':<12}{'rollout s':>10}{'sent':>8}{'failed':>8}{'failed %':>10}  failures")
    for strategy, seconds, counts in rows:
        share = 100 * counts["failed"] / max(counts["sent"], 1)
        print(
            f"{strategy:<12}{seconds:>10.1f}{counts['sent']:>8}{counts['failed']:>8}{share:>9.2f}%"
            f"  {counts['failures'] or '-'}"
        )
    print(
        f"(policy: canary steps {policy.canary_steps} held {policy.step_seconds:g} s each, old "
        f"version kept warm {policy.keep_blue_seconds:g} s; 2 clients, one-row V2 requests)"
    )


if __name__ == "__main__":
    main()
