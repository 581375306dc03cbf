"""Swarm target benchmark: what rollouts, scaling and a dead node cost the clients of a live
endpoint on a 3-node swarm, beside the single-host Docker target under the same load.

Run: `.venv/bin/python benchmarks/swarm_target.py` (after `shipyard stack up`; the engine must
not be in a swarm of someone else's, and this machine needs ~3 GB free). It starts its own
Prefect server, releases the reference scikit-learn project twice (two versions with pushed
images), then on each target in turn: deploys the first version (Swarm: 3 replicas on a swarm of
this engine and two node containers, `benchmarks`' own, removed at the end), rolls to the second
(blue-green), back (canary), and to the second again (as a rollback does), then on Swarm scales
to 1 and to 5 replicas and kills one worker node's container. All the while two clients send
one-row requests (`tests/support/load.py`, 127.0.0.1 only, `RATE` requests/s in all).

For the dead node: failures until HAProxy's health checks mark its replicas DOWN, failures
after that, and the time until Swarm runs 5 replicas again on the nodes left.

The way in: the swarm endpoint on 127.0.0.1 (the default deploy host: a front HAProxy on the
host's network, then the proxy service's unix socket) beside a second endpoint of the same
version deployed for all addresses (the proxy service's port published in host mode, which
this machine's connections to 127.0.0.1 reach through Docker's userland proxy), both with 3
replicas on the same nodes, driven by wrk in alternating slices (`ENTRY_SLICES` of
`ENTRY_SECONDS` s each) at 1 and at 16 connections.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
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
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from prefect.testing.utilities import prefect_test_harness
from serving_floor import REPORT as WRK_REPORT

from shipyard import engine, registry
from shipyard.deploy import containers, state
from shipyard.deploy import swarm_specs as specs
from shipyard.deploy.endpoint import Target
from shipyard.deploy.swarm_endpoint import SwarmEndpoint
from shipyard.deploy.targets import undeploy
from shipyard.flows.release import release
from shipyard.flows.rollout import rollout, target_of_version
from shipyard.manifest import DeployPolicy
from shipyard.settings import Settings
from shipyard.stack import nodes
from shipyard.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
MODEL = "digits-sklearn"
PREFIX = "shipyard-bench-node"
RATE = 60
ENTRY_SLICES = int(os.environ.get("BENCH_ENTRY_SLICES", "6"))
ENTRY_SECONDS = 3
BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
LOAD_ARGS = ("--seconds", "600", "--rate", str(RATE))
Row = tuple[str, str, float, dict[str, Any]]


class Load:
    """Two clients on `url` from start to `stop()`; their counts."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [*(sys.executable, "-m", "tests.support.load", url, MODEL), *LOAD_ARGS],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"started"

    def stop(self) -> dict[str, Any]:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        return dict(json.loads(out.splitlines()[-1]))


def under_load(url: str, action: Callable[[], object]) -> tuple[float, dict[str, Any]]:
    load = Load(url)
    time.sleep(1)  # the clients are under way before anything moves
    start = time.perf_counter()
    try:
        action()
    finally:
        seconds = time.perf_counter() - start
        time.sleep(1)
        counts = load.stop()
    return seconds, counts


def rollouts(
    target: str, url: str, targets: list[Target], policy: DeployPolicy, settings: Settings
) -> list[Row]:
    rows = []
    for name, version, strategy in (
        ("blue-green", targets[1], "blue-green"),
        ("canary", targets[0], "canary"),
        ("rollback", targets[1], "blue-green"),
    ):
        step = partial(rollout, version, strategy, policy, settings, record_policy=True)
        seconds, counts = under_load(url, step)
        rows.append((target, name, seconds, counts))
        print(f"{target} {name}: {seconds:.1f} s, {counts}", file=sys.stderr)
    return rows


def kill_a_node(settings: Settings, url: str) -> list[Row]:
    """Kill the worker node holding replicas of the serving version, under load."""
    client = engine.engine(settings)
    endpoint = SwarmEndpoint.open(settings, MODEL, None)
    d = endpoint.deployment
    assert d.live is not None
    service = client.services.get(specs.service_name(MODEL, d.port, d.live))
    placed = specs.per_node(client, service)
    victim = next(n for n in sorted(placed) if n.startswith(PREFIX))
    dead_ids = {n.id for n in client.nodes.list() if n.attrs["Description"]["Hostname"] == victim}
    dead = {
        a.split("/")[0]
        for t in specs.tasks(service)
        if t["NodeID"] in dead_ids
        for n in t.get("NetworksAttachments", [])
        for a in n.get("Addresses", [])
    }
    replicas = sum(placed.values())
    load = Load(url)
    time.sleep(2)
    start = time.perf_counter()
    client.containers.get(victim).kill()
    wait_until(
        lambda: (
            not any(
                s.address.split(":")[0] in dead and s.status == "UP"
                for s in endpoint.proxy.servers()
            )
        ),
        60,
        0.05,
    )
    marked = time.perf_counter() - start
    before = load.stop()
    load = Load(url)

    def back() -> bool:
        service.reload()
        alive = [t for t in specs.tasks(service) if t["NodeID"] not in dead_ids]
        return len(alive) >= replicas and len(endpoint.proxy.up(d.live or "")) >= replicas

    wait_until(back, 180, 0.2)
    restored = time.perf_counter() - start
    time.sleep(2)
    after = load.stop()
    print(
        f"node {victim} killed: down in {marked:.1f} s {before}; back in {restored:.1f} s {after}"
    )
    return [
        ("swarm", f"kill {victim}: until marked DOWN", marked, before),
        ("swarm", "kill: after, until 5 replicas run", restored - marked, after),
    ]


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run of one-row requests: requests, seconds, failures, p50 and p99 (ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{json.dumps(BODY)}]==]\n" + WRK_REPORT
        )
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name,
             f"{url}/v2/models/{MODEL}/infer"],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    line = next(line for line in out.splitlines() if line.startswith("SUMMARY "))
    requests, duration, failed, errors, p50, p99 = map(float, line.split()[1:])
    return {
        "requests": requests,
        "seconds": duration,
        "failed": failed + errors,
        "p50": p50 / 1000,
        "p99": p99 / 1000,
    }


def entry_paths(
    settings: Settings, local_url: str, target: Target, policy: DeployPolicy, tmp: Path
) -> list[str]:
    """The local endpoint (front HAProxy) beside one published on all addresses, same version
    and replicas, in alternating wrk slices; one line per connection count."""
    everywhere = settings.model_copy(
        update={
            "state_dir": tmp / "state-published",
            "mlflow_tracking_uri": settings.tracking_uri,
            "deploy_host": "0.0.0.0",
        }
    )
    published = policy.model_copy(update={"port": containers.free_port("127.0.0.1")})
    rollout(target, "blue-green", published, everywhere, record_policy=True)
    urls = {"local (front)": local_url, "published": f"http://127.0.0.1:{published.port}"}
    lines = []
    try:
        for connections in (1, 16):
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
            for url in urls.values():
                wrk(url, connections, 1)  # warm-up
            for i in range(ENTRY_SLICES):
                for name in list(urls)[:: 1 if i % 2 == 0 else -1]:
                    runs[name].append(wrk(urls[name], connections, ENTRY_SECONDS))
            summary = {
                name: (
                    sum(r["requests"] for r in rs) / sum(r["seconds"] for r in rs),
                    statistics.median(r["p50"] for r in rs),
                    statistics.median(r["p99"] for r in rs),
                    sum(r["failed"] for r in rs),
                )
                for name, rs in runs.items()
            }
            for name, (rps, p50, p99, failed) in summary.items():
                lines.append(
                    f"{name:<16}{connections:>6}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{failed:>8.0f}"
                )
            (front, *_), (other, *_) = summary["local (front)"], summary["published"]
            lines.append(f"{'front/published':<16}{connections:>6}{front / other:>10.2f}")
            print(lines[-1], file=sys.stderr)
    finally:
        undeploy(everywhere, MODEL)
    return lines


def main() -> None:
    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp) / "state", latency_runs=50)
        project = Path(tmp) / "project"
        shutil.copytree(ROOT / "examples" / MODEL, project)
        manifest = project / "shipyard.yaml"
        text = manifest.read_text().split("\ndeploy:")[0]
        manifest.write_text(text + "\n")
        first = release(source=str(project), until="push", settings=settings)
        manifest.write_text(manifest.read_text().replace("seed: 0", "seed: 1"))
        second = release(source=str(project), until="push", settings=settings)
        mlflow = registry.client(settings)
        targets = [
            target_of_version(settings, MODEL, mlflow.get_model_version(MODEL, v))
            for v in (first.version, second.version)
        ]
        rows: list[Row] = []
        common = {"canary_steps": [10, 50, 100], "step_seconds": 3, "keep_blue_seconds": 3}
        docker_policy = DeployPolicy(port=containers.free_port("127.0.0.1"), **common)
        url = rollout(
            targets[0], "blue-green", docker_policy, settings, record_policy=True
        ).endpoint
        try:
            rows += rollouts("docker", url, targets, docker_policy, settings)
        finally:
            undeploy(settings, MODEL)
        stack = Settings()
        nodes.up(stack, 3, engine.base_image(stack), print, prefix=PREFIX)
        try:
            swarm_policy = DeployPolicy(
                target="swarm", replicas=3, port=containers.free_port("127.0.0.1"), **common
            )
            url = rollout(
                targets[0], "blue-green", swarm_policy, settings, record_policy=True
            ).endpoint
            try:
                rows += rollouts("swarm", url, targets, swarm_policy, settings)
                entry = entry_paths(settings, url, targets[1], swarm_policy, Path(tmp))
                for n in (1, 5):
                    scale = partial(SwarmEndpoint.open(settings, MODEL, None, print).scale, n)
                    seconds, counts = under_load(url, scale)
                    rows.append(("swarm", f"scale to {n}", seconds, counts))
                rows += kill_a_node(settings, url)
                d = state.load(settings.deploy_dir, MODEL)
                assert d is not None and d.live is not None
            finally:
                undeploy(settings, MODEL)
        finally:
            nodes.down(stack, print, prefix=PREFIX)
    print(f"\n{'target':<8}{'step':<40}{'seconds':>8}{'sent':>8}{'failed':>8}{'failed %':>10}")
    for target, name, seconds, counts in rows:
        share = 100 * counts["failed"] / max(counts["sent"], 1)
        print(
            f"{target:<8}{name:<40}{seconds:>8.1f}{counts['sent']:>8}{counts['failed']:>8}"
            f"{share:>9.2f}%  {counts['failures'] or ''}"
        )
    print(
        f"(2 clients, {RATE} one-row V2 requests/s in all, 127.0.0.1; swarm: this engine and two "
        "node containers, 3 replicas; canary steps 10/50/100 % held 3 s; old version kept 3 s)"
    )
    print(f"\n{'swarm entry':<16}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
    print("\n".join(entry))
    print(
        f"(one-row V2 requests from wrk, {ENTRY_SLICES} alternating slices of {ENTRY_SECONDS} s "
        "per endpoint; the same version with 3 replicas behind each; published: the proxy "
        "service's host-mode port, reached through Docker's userland proxy)"
    )


if __name__ == "__main__":
    main()
