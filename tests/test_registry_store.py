"""Which store a process's MLflow clients open: the configured tracking URI, else the embedded
SQLite file, reached through the stack's MLflow server while that server serves the same file
and answers (opening the file costs each process about 2 s). The end-to-end path (a worker's
release and a CLI promote registered through the stack's server) is in `test_services.py`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from shipyard import registry
from shipyard.deploy.containers import free_port
from shipyard.settings import Settings
from shipyard.stack import postgres, services, supervisor
from shipyard.waiting import wait_until

pytestmark = pytest.mark.unit


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """A real HTTP server answering `/health` as MLflow's does; stopped when the test ends."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    registry._answers.cache_clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    registry._answers.cache_clear()


def test_the_embedded_store_goes_through_its_server_while_it_answers_else_the_file(
    server: str, tmp_path: Path
) -> None:
    settings = Settings(state_dir=tmp_path / "state", mlflow_server_url=server)
    assert registry.store_uri(settings) == server
    client = registry.client(settings)
    assert client.tracking_uri == server

    down = Settings(state_dir=tmp_path / "state", mlflow_server_url="http://127.0.0.1:9")
    assert registry.store_uri(down) == down.tracking_uri
    assert down.tracking_uri == f"sqlite:///{(tmp_path / 'state').resolve()}/mlflow.db"
    registry.client(down)
    assert (tmp_path / "state").is_dir()  # the file's directory, made for the SQLite store

    # A tracking URI the user configured is used as it is, server or not.
    team = Settings(mlflow_tracking_uri="https://mlflow.team.example", mlflow_server_url=server)
    assert registry.store_uri(team) == "https://mlflow.team.example"


def test_the_stack_names_its_mlflow_server_only_to_clients_of_the_store_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLFLOW_TRACKING_URI", "SHIPYARD_MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "unit")
    stack = tmp_path / "stack"
    settings = Settings(stack_dir=stack, state_dir=tmp_path / "project-a", mlflow_port=5123)
    assert postgres.serving(settings) is None  # no server in this stack yet
    plan = {s.name: s for s in services.plan(settings, "sqlite")}
    mlflow = plan["mlflow-server"]
    # The program file as `stack up` writes it.
    (stack / "supervisor.d").mkdir(parents=True)
    (stack / "supervisor.d" / "mlflow-server.conf").write_text(
        supervisor.render_program(supervisor.Program(mlflow.name, mlflow.args), stack / "m.log")
    )
    assert postgres.serving(settings) == "http://127.0.0.1:5123"
    assert plan["prefect-worker"].env["SHIPYARD_MLFLOW_SERVER_URL"] == "http://127.0.0.1:5123"

    environ: dict[str, str] = {}
    assert postgres.use_stack_mlflow(settings, environ, "sqlite") is None
    assert environ == {"SHIPYARD_MLFLOW_SERVER_URL": "http://127.0.0.1:5123"}
    # Another project's store (another state directory) is not this server's: its file it is.
    other = Settings(stack_dir=stack, state_dir=tmp_path / "project-b", mlflow_port=5123)
    environ = {}
    postgres.use_stack_mlflow(other, environ, "sqlite")
    assert postgres.serving(other) is None and environ == {}
    # Nor is a configured tracking server's client pointed anywhere else.
    team = Settings(
        stack_dir=stack, state_dir=tmp_path / "project-a", mlflow_tracking_uri="https://m.team"
    )
    environ = {}
    postgres.use_stack_mlflow(team, environ, "sqlite")
    assert environ == {}


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_run_ended_through_a_real_mlflow_server_prints_nothing_to_stdout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow prints a "View run" link when a run ends over HTTP: `shipyard … --json` would no
    longer print JSON alone."""
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    port = free_port("127.0.0.1")
    state = tmp_path / "served"
    state.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
         "--default-artifact-root", (state / "artifacts").as_uri()],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    registry._answers.cache_clear()
    try:
        wait_until(lambda: answers(f"{url}/health"), 90, 0.5)
        client = registry.client(Settings(state_dir=tmp_path / "state", mlflow_server_url=url))
        assert client.tracking_uri == url
        run = client.create_run(client.create_experiment("printing"))
        capfd.readouterr()
        client.set_terminated(run.info.run_id, "FINISHED")
        assert capfd.readouterr().out == ""
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
    finally:
        server.terminate()
        server.wait(timeout=30)
        registry._answers.cache_clear()
