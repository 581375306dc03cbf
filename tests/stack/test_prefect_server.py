"""The stack's Prefect server on SQLite takes concurrent writes without "database is locked".

A real server from the command the stack runs (`shipyard.stack.prefect_server`), on SQLite in
a temporary PREFECT_HOME, and clients writing at once as a busy stack does: webhook pushes
creating runs while workers move other runs through their states. Prefect's own
`prefect server start` answered most of these 503 here (56 of 64 run creations in one try).
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from shipyard.image.build import free_port
from shipyard.settings import Settings
from shipyard.stack import services

pytestmark = pytest.mark.unit

CLIENTS, RUNS_EACH = 8, 4


def test_the_stack_runs_its_prefect_server_command(tmp_path: Path) -> None:
    (server,) = (
        s for s in services.plan(Settings(stack_dir=tmp_path)) if s.name == "prefect-server"
    )
    assert server.args[: len(services.PREFECT_SERVER)] == services.PREFECT_SERVER
    assert server.args[len(services.PREFECT_SERVER) :][:2] == ["server", "start"]


async def _write_at_once(api: str) -> collections.Counter[str]:
    answers: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(base_url=api, timeout=120) as client:
        flow = (await client.post("/flows/", json={"name": "contention"})).raise_for_status()
        deployment = await client.post(
            "/deployments/", json={"name": "d", "flow_id": flow.json()["id"]}
        )
        deployment_id = deployment.raise_for_status().json()["id"]

        async def post(what: str, path: str, body: dict) -> httpx.Response | None:
            try:
                answer = await client.post(path, json=body)
            except httpx.TransportError as e:  # Prefect's own server also dropped connections
                answers[f"{what} {type(e).__name__}"] += 1
                return None
            answers[f"{what} {answer.status_code}"] += 1
            return answer

        async def one_client() -> None:
            for _ in range(RUNS_EACH):
                run = await post("create", f"/deployments/{deployment_id}/create_flow_run", {})
                if run is None or run.status_code != 201:
                    continue
                for state in ("PENDING", "RUNNING", "COMPLETED"):
                    await post(
                        "set_state",
                        f"/flow_runs/{run.json()['id']}/set_state",
                        {"state": {"type": state}, "force": True},
                    )

        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return answers


def test_concurrent_run_creations_and_state_changes_all_succeed_on_sqlite(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [*services.PREFECT_SERVER, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not answer within 120 s"
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        answers = asyncio.run(_write_at_once(api))
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    runs = CLIENTS * RUNS_EACH
    assert answers == {"create 201": runs, "set_state 201": 3 * runs}, dict(answers)
