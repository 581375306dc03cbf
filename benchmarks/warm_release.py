"""Warm release: `shipyard release` of unchanged inputs, its wall time, on the stack.

Run: `make bench-warm`. It needs the stack with its services (Prefect server, engine server,
engine and registry) and runs `shipyard stack up` first if any of them is down (as `shipyard
stack status` reports them; an engine server's socket left by a stopped stack is not one). It
releases examples/digits-sklearn up to `push` into a new state directory of its own
(registered and pushed there; what the stack caches across state directories, such as the
sandbox's data, may be reused), then once more untimed (the CLI's own caches), then WARM_RUNS
times with every input unchanged, alternating between the two ways the command runs: handed to
the stack's engine server, which forks it with Prefect, MLflow and the stages already imported
(`shipyard.launcher`, the default when that server answers), and in its own process
(`SHIPYARD_NO_FORK=1`). Each figure is the command's wall time, as a user waits for it; every
warm run must reuse the version the first one made.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shipyard.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SHIPYARD = str(Path(sys.executable).parent / "shipyard")
PROJECT = ROOT / "examples" / "digits-sklearn"
WARM_RUNS = int(os.environ.get("BENCH_WARM_RUNS", "5"))


def release(env: dict[str, str], forked: bool) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(
        [SHIPYARD, "release", str(PROJECT), "--until", "push", "--json"],
        env={**env, "SHIPYARD_NO_FORK": "" if forked else "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"release failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def down(settings: Settings) -> list[str]:
    """The stack's services that `shipyard stack status` does not report up."""
    from shipyard.stack import services

    return [
        f"{name}: {state}"
        for name, state in services.status(settings).items()
        if name not in ("backend", "pool") and not state.startswith(("healthy", "running"))
    ]


def main() -> None:
    settings = Settings()
    if missing := down(settings):
        print(f"{'; '.join(missing)}: `shipyard stack up` ...", flush=True)
        subprocess.run([SHIPYARD, "stack", "up"], check=True, stdout=subprocess.DEVNULL)
        if missing := down(settings):
            raise SystemExit(f"after `shipyard stack up`, still down: {'; '.join(missing)}")
    api = os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{settings.prefect_port}/api"
    with tempfile.TemporaryDirectory(prefix="shipyard-warm-") as state:
        env = {**os.environ, "SHIPYARD_STATE_DIR": state, "PREFECT_API_URL": api}
        env.pop("SHIPYARD_MLFLOW_SERVER_URL", None)  # MLflow on the state directory's own store
        print(f"releasing {PROJECT.name} up to push into a new state directory ...", flush=True)
        first, summary = release(env, forked=True)
        release(env, forked=True)  # untimed
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(2 * WARM_RUNS):
            forked = i % 2 == 0
            seconds, again = release(env, forked)
            if not again.get("reused") or again["version"] != summary["version"]:
                raise SystemExit(f"a warm release made a new version: {again}")
            times[forked].append(seconds)
    print(
        f"\n{PROJECT.name}, `shipyard release --until push`, wall time (s); "
        f"first, new state directory {first:.2f} (version {summary['version']})\n"
    )
    print(f"{'warm, unchanged inputs':<36}{'median':>8}{'best':>7}{'worst':>7}   runs")
    for forked, label in (
        (True, "through the engine server (fork)"),
        (False, "in its own process"),
    ):
        runs = times[forked]
        print(
            f"{label:<36}{statistics.median(runs):>8.2f}{min(runs):>7.2f}{max(runs):>7.2f}   "
            + "  ".join(f"{s:.2f}" for s in runs)
        )


if __name__ == "__main__":
    main()
