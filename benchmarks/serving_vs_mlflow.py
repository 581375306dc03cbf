"""Serving benchmark: Shipyard's server against `mlflow models serve`, same model, same load.

Run: `make bench-serving`. One run releases the reference scikit-learn project into a fresh
state directory, starts both servers on 127.0.0.1 on the registered version (ours with API
keys and metrics on), and drives each with wrk (Debian's package): 8 connections, 10 s per
case, single-row and 32-row requests to MLflow's /invocations contract, plus our V2 route.
It prints requests/s, p50 and p99 for each, and the ratios.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KEY = "bench-key"
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready in 120 s")


def wrk(url: str, body: dict, connections: int = CONNECTIONS) -> dict[str, float]:
    """Requests/s and p50/p99 (ms) of a wrk run posting `body`."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
            f"wrk.body = [==[{json.dumps(body)}]==]\n"  # JSON holds "]]"
        )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{SECONDS}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=SECONDS + 60,
    ).stdout
    os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses\n{out}")

    def ms(pct: str) -> float:
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": ms("50"), "p99": ms("99")}


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (make bench-serving does)")
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-serving-bench-"))
    env = {
        **os.environ,
        "SHIPYARD_STATE_DIR": str(tmp / "state"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    servers: list[subprocess.Popen[bytes]] = []
    try:
        print("releasing examples/digits-sklearn ...", flush=True)
        done = subprocess.run(
            [
                str(BIN / "shipyard"),
                "release",
                str(ROOT / "examples" / "digits-sklearn"),
                "--until",
                "register",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        uri = f"models:/digits-sklearn/{summary['version']}"
        sys.path.insert(0, str(ROOT))
        from shipyard.bundle import materialize
        from shipyard.settings import Settings

        bundle = materialize(uri, Settings(state_dir=tmp / "state"))
        x = json.loads((ROOT / "benchmarks" / "digits_rows.json").read_text())

        def ours(batching: bool) -> str:
            port = free_port()
            server_env = {
                **env,
                "SHIPYARD_SERVE_MODEL_DIR": str(bundle),
                "SHIPYARD_SERVE_PORT": str(port),
                "SHIPYARD_SERVE_API_KEYS": KEY,
                "SHIPYARD_SERVE_BATCHING": str(batching).lower(),
            }
            servers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "shipyard_serving"],
                    env=server_env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/v2/health/ready", servers[-1])
            return url

        port = free_port()
        servers.append(
            subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    uri,
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                ],
                env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'state' / 'mlflow.db'}"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        mlflow_url = f"http://127.0.0.1:{port}"
        wait_ready(f"{mlflow_url}/ping", servers[-1])
        plain, batched = ours(False), ours(True)

        one, many = {"inputs": x[:1]}, {"inputs": x[:32]}
        flat = [v for row in x[:1] for v in row]
        v2 = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": flat}]}
        results = {
            ("mlflow", "1 row"): wrk(f"{mlflow_url}/invocations", one),
            ("mlflow", "32 rows"): wrk(f"{mlflow_url}/invocations", many),
            ("shipyard", "1 row"): wrk(f"{plain}/invocations", one),
            ("shipyard", "32 rows"): wrk(f"{plain}/invocations", many),
            ("shipyard V2", "1 row"): wrk(f"{plain}/v2/models/digits-sklearn/infer", v2),
            ("shipyard batching", "1 row"): wrk(f"{batched}/invocations", one),
            ("shipyard batching", "32 rows"): wrk(f"{batched}/invocations", many),
            ("shipyard", "1 row, 1 client"): wrk(f"{plain}/invocations", one, connections=1),
            ("shipyard batching", "1 row, 1 client"): wrk(
                f"{batched}/invocations", one, connections=1
            ),
        }
        workers = min(os.cpu_count() or 1, 8)
        print(
            f"\nmodel {uri} ({summary['variant']}), {CONNECTIONS} connections unless noted, {SECONDS} s per case; "
            f"shipyard: {workers} workers, API key and metrics on; mlflow: defaults\n"
        )
        print(
            f"{'server':<20}{'request':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'× mlflow':>10}"
        )
        for (server, case), r in results.items():
            base = results.get(("mlflow", case))
            ratio = f"{r['rps'] / base['rps']:.1f}×" if base and server != "mlflow" else ""
            print(
                f"{server:<20}{case:<18}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{ratio:>10}"
            )
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
