"""Serving overhead: Shipyard's server against the floor (a bare uvicorn + ONNX Runtime app).

Run: `make bench-floor`. One run trains the reference scikit-learn project with the stage functions
and writes its INT8 graph as a release bundle, then starts, on 127.0.0.1 and with the same number
of worker processes, `python -m shipyard_serving` (API keys and metrics on) and
benchmarks/floor_server.py (neither), each worker on its own socket (shipyard_serving/listen.py),
and Shipyard's server once more with its workers sharing one socket as uvicorn's do ("shared"). It
prints how long each took from process start to its first 200 on /v2/health/ready, then drives each
with wrk at two shapes (1 row with 16 connections, 32 rows with 8) on MLflow's /invocations
contract, and prints requests/s, p50 and p99, and each Shipyard server's requests/s and p99 over
the floor's.

Each case runs BENCH_SECONDS (10) per server, in BENCH_ROUNDS (10) slices that alternate between
the servers, so that other work on the machine weighs on both alike: requests/s is over all
of a server's slices, p50 and p99 are the medians of its slices' values. wrk shares the machine's
cores with the servers, so requests/s also moves with the machine's speed from run to run; the
servers' own CPU time per request (their processes' user and system time from /proc over the
slices, divided by the requests answered) moves less, and is printed beside it.
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
from pathlib import Path

import httpx
from serving_vs_mlflow import KEY, SECONDS, free_port

ROOT = Path(__file__).resolve().parent.parent
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
SHAPES = [("1 row", 1, 16), ("32 rows", 32, 8)]  # name, rows per request, connections
# wrk's summary as numbers: requests, seconds, non-2xx answers, socket errors, p50 and p99 (µs).
REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("SUMMARY %d %f %d %d %f %f\\n", summary.requests,
    summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def build_bundle(out: Path) -> Path:
    """digits-sklearn's INT8 graph and its shipyard.json, as a release bundle in `out`."""
    sys.path.insert(0, str(ROOT))
    from shipyard.export import export_onnx
    from shipyard.manifest import load_manifest
    from shipyard.optimize import quantize
    from shipyard.project import load_dataset
    from shipyard.training import train_model

    project = ROOT / "examples" / "digits-sklearn"
    manifest = load_manifest(project)
    data = load_dataset(project, manifest)
    trained = train_model(project, manifest, data, out / "train")
    fp32 = export_onnx(trained, manifest, out / "export")
    bundle = out / "bundle"
    bundle.mkdir()
    calibration = data.x_train[: manifest.optimize.calibration_samples]
    quantize(fp32, bundle / "model.onnx", manifest, calibration)
    meta = {"name": manifest.name, "version": "1", "labels": manifest.labels, "variant": "int8"}
    (bundle / "shipyard.json").write_text(json.dumps(meta))
    return bundle


def start(
    command: list[str], env: dict[str, str], port: int
) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server; return it and the seconds from its start to a 200 on /v2/health/ready."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    with httpx.Client(timeout=1) as client:
        while time.perf_counter() - started < 120:
            if process.poll() is not None:
                raise SystemExit(f"{command}: exited with {process.returncode}")
            try:
                if client.get(url).status_code == 200:
                    return process, time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    process.kill()
    raise SystemExit(f"{url} not ready in 120 s")


def cpu_seconds(pid: int) -> float:
    """User and system time of process `pid` and its children (uvicorn's workers) so far."""
    total = 0
    for task in [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]:
        fields = Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5), from field 3 on)
    return total / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: dict, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run posting `body`: requests, seconds, p50 and p99 (ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
            f"wrk.body = [==[{json.dumps(body)}]==]\n" + REPORT
        )
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    line = next(line for line in out.splitlines() if line.startswith("SUMMARY "))
    requests, duration, failed, errors, p50, p99 = map(float, line.split()[1:])
    if failed or errors:
        raise SystemExit(f"{url}: {failed:.0f} non-2xx answers, {errors:.0f} socket errors\n{out}")
    return {"requests": requests, "seconds": duration, "p50": p50 / 1000, "p99": p99 / 1000}


def load(
    urls: dict[str, str], pids: dict[str, int], body: dict, connections: int
) -> dict[str, dict[str, float]]:
    """Each server's requests/s, p50, p99 and CPU µs per request over ROUNDS alternating slices
    of a wrk run."""
    runs: dict[str, list[dict[str, float]]] = {server: [] for server in urls}
    seconds = max(1, round(SECONDS / ROUNDS))
    for url in urls.values():  # warm-up, not counted
        wrk(url, body, connections, 1)
    for i in range(ROUNDS):
        for server in list(urls)[:: 1 if i % 2 == 0 else -1]:
            before = cpu_seconds(pids[server])
            run = wrk(urls[server], body, connections, seconds)
            run["cpu"] = cpu_seconds(pids[server]) - before
            runs[server].append(run)
    return {
        server: {
            "rps": sum(r["requests"] for r in slices) / sum(r["seconds"] for r in slices),
            "p50": statistics.median(r["p50"] for r in slices),
            "p99": statistics.median(r["p99"] for r in slices),
            "cpu_us": 1e6 * sum(r["cpu"] for r in slices) / sum(r["requests"] for r in slices),
        }
        for server, slices in runs.items()
    }


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (make bench-floor does)")
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-floor-bench-"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        print("training and exporting examples/digits-sklearn ...", flush=True)
        bundle = build_bundle(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_SERVE_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)

        floor_port, ours_port, shared_port = free_port(), free_port(), free_port()
        floor, floor_start = start(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "floor_server.py"),
                str(bundle),
                f"--port={floor_port}",
                f"--workers={WORKERS}",
                "--reuse-port",
            ],
            env,
            floor_port,
        )
        servers.append(floor)
        ours_env = {
            **env,
            "SHIPYARD_SERVE_MODEL_DIR": str(bundle),
            "SHIPYARD_SERVE_PORT": str(ours_port),
            "SHIPYARD_SERVE_WORKERS": str(WORKERS),
            "SHIPYARD_SERVE_API_KEYS": KEY,
        }
        ours, ours_start = start([sys.executable, "-m", "shipyard_serving"], ours_env, ours_port)
        servers.append(ours)
        shared_env = {
            **ours_env,
            "SHIPYARD_SERVE_PORT": str(shared_port),
            "SHIPYARD_SERVE_REUSE_PORT": "false",
        }
        shared, _ = start([sys.executable, "-m", "shipyard_serving"], shared_env, shared_port)
        servers.append(shared)

        x = json.loads((ROOT / "benchmarks" / "digits_rows.json").read_text())
        urls = {
            server: f"http://127.0.0.1:{port}/invocations"
            for server, port in (
                ("floor", floor_port),
                ("shipyard", ours_port),
                ("shared", shared_port),
            )
        }
        pids = {"floor": floor.pid, "shipyard": ours.pid, "shared": shared.pid}
        results = {}
        for name, n, connections in SHAPES:
            for server, r in load(urls, pids, {"inputs": x[:n]}, connections).items():
                results[server, name] = r
        metrics = httpx.get(
            f"http://127.0.0.1:{ours_port}/metrics", headers={"X-API-Key": KEY}
        ).text
        if 'shipyard_requests_total{route="/invocations",status="200"}' not in metrics:
            raise SystemExit("Shipyard's server counted no /invocations: were metrics on?")

        print(
            f"\ndigits-sklearn int8, {WORKERS} workers each, {SECONDS} s per case and server in "
            f"{ROUNDS} alternating slices, wrk 1 thread; "
            "shipyard: API key and metrics on; floor: benchmarks/floor_server.py; both with a "
            "socket per worker; shared: shipyard with SHIPYARD_SERVE_REUSE_PORT=false, its "
            "workers accepting from one socket\n"
        )
        print(f"start to ready: floor {floor_start:.2f} s, shipyard {ours_start:.2f} s\n")
        print(
            f"{'request':<22}{'server':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'CPU µs/req':>12}{'req/s ×':>10}{'p99 ×':>8}{'CPU ×':>8}"
        )
        for name, _, connections in SHAPES:
            base = results["floor", name]
            for server in ("floor", "shipyard", "shared"):
                r = results[server, name]
                ratios = (
                    f"{r['rps'] / base['rps']:>10.2f}{r['p99'] / base['p99']:>8.2f}"
                    f"{r['cpu_us'] / base['cpu_us']:>8.2f}"
                    if server != "floor"
                    else ""
                )
                case = f"{name}, {connections} conns"
                print(
                    f"{case:<22}{server:<10}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
                    f"{r['cpu_us']:>12.1f}{ratios}"
                )
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
