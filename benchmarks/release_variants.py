"""Release benchmark: the variant table of each reference project, and cold/warm release times.

Run: `make bench`. It starts its own Prefect server on 127.0.0.1 (as a team would run one),
releases each reference project with the CLI into a fresh state directory (cold), again
with unchanged inputs (warm, served from the task cache and the registry), and once more
warm without a server (Prefect's ephemeral mode, which starts a server per run).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHIPYARD = str(Path(sys.executable).parent / "shipyard")
PROJECTS = ("digits-sklearn", "digits-cnn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prefect(
    home: Path, extra_env: dict[str, str] | None = None, command: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A Prefect server on a free port, its home in `home` (on SQLite there, unless
    `extra_env` names another database), run by `command` (else Prefect's `prefect`)."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(extra_env or {}),
    }
    server = subprocess.Popen(
        [
            *(command or [str(Path(sys.executable).parent / "prefect")]),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("Prefect server did not start within 120 s")


def release(project: str, state: Path, api_url: str | None) -> tuple[float, dict]:
    env = {**os.environ, "SHIPYARD_STATE_DIR": str(state)}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    start = time.perf_counter()
    done = subprocess.run(
        [SHIPYARD, "release", str(ROOT / "examples" / project), "--until", "register", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"release of {project} failed:\n{done.stderr}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def variant_table(state: Path, fingerprint: str) -> str:
    report = json.loads((state / "builds" / fingerprint / "report" / "validation.json").read_text())
    fp32 = next(v for v in report["variants"] if v["variant"] == "fp32")
    lines = [
        f"{'variant':<10}{'size KiB':>9}{'% fp32':>8}{'accuracy':>10}{'Δacc pp':>9}"
        f"{'b1 p50':>9}{'b1 p99':>9}{'b32 p50':>9}{'b32 p99':>9}  chosen"
    ]
    for v in report["variants"]:
        lines.append(
            f"{v['variant']:<10}{v['size_bytes'] / 1024:>9.1f}{100 * v['size_bytes'] / fp32['size_bytes']:>7.1f}%"
            f"{v['accuracy']:>10.4f}{100 * (v['accuracy'] - fp32['accuracy']):>+9.2f}"
            f"{v['batch1']['p50_ms']:>9.3f}{v['batch1']['p99_ms']:>9.3f}"
            f"{v['batch32']['p50_ms']:>9.3f}{v['batch32']['p99_ms']:>9.3f}  "
            f"{'*' if v['variant'] == report['chosen'] else ''}"
        )
    return "\n".join(lines) + "\n(latencies in ms, ONNX Runtime CPU, 1 intra-op thread)"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        root = Path(tmp)
        print("starting a Prefect server on 127.0.0.1 ...", flush=True)
        server, api_url = start_prefect(root / "prefect-home")
        try:
            for project in PROJECTS:
                state = root / project
                cold, summary = release(project, state, api_url)
                warm, again = release(project, state, api_url)
                ephemeral, _ = release(project, state, None)
                assert again["reused"] and again["version"] == summary["version"]
                print(
                    f"\n== {project} (variant {summary['variant']}, fingerprint {summary['fingerprint'][:12]})"
                )
                print(variant_table(state, summary["fingerprint"]))
                print(
                    f"release cold {cold:6.1f} s | warm {warm:6.1f} s ({100 * warm / cold:.0f}% of cold)"
                    f" | warm, ephemeral Prefect {ephemeral:6.1f} s"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
