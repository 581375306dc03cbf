"""The worker's engine server and its client, as real processes on a real unix socket: a run's
process started by the client behaves as `python -m prefect.engine` would (its output, its exit
code, its signals), dies with its engine, and never runs code older than what is on disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipyard.processes import short_socket_path
from shipyard.stack import engine_client
from shipyard.waiting import wait_until

pytestmark = pytest.mark.unit

CLIENT = [sys.executable, "-I", "-S", str(Path(engine_client.__file__).resolve())]


@dataclass
class Server:
    process: subprocess.Popen[str]
    socket: Path
    log: Path

    def engine_pid(self, run: str) -> int:
        for line in self.log.read_text().splitlines():
            if f"flow run {run}: engine pid" in line:
                return int(line.rsplit(" ", 1)[1])
        raise LookupError(run)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # A module of the server's own (site imports `sitecustomize` from PYTHONPATH), whose file a
    # test can touch as an upgrade would.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("")
    path, log = short_socket_path(tmp_path, "engine.sock"), tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shipyard.stack.engine_server", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
    try:
        wait_until(lambda: "listening" in log.read_text() or process.poll() is not None, 60, 0.1)
        assert process.poll() is None, log.read_text()
        yield Server(process, path, log)
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A Prefect API that accepts connections and never answers: an engine asking it for its
    flow run waits (as a run does on a slow server) until it is stopped."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie of the server's (not reaped yet) counts as gone.
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" in status


def wait_for_engine(server: Server, run_id: str) -> int:
    wait_until(lambda: f"flow run {run_id}" in server.log.read_text(), 30, 0.05)
    return server.engine_pid(run_id)


def wait_for_end(server: Server, engine: int) -> str:
    """How the server saw the engine end (`exit N`, `signal N`), once it is gone."""
    wait_until(lambda: gone(engine), 30, 0.1)
    wait_until(lambda: f"engine pid {engine}: " in server.log.read_text(), 30, 0.1)
    return server.log.read_text().split(f"engine pid {engine}: ")[1].splitlines()[0]


def test_a_forked_engine_answers_as_python_m_prefect_engine_does(
    server: Server, tmp_path: Path
) -> None:
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": "not-a-uuid"}
    forked = run([*CLIENT, str(server.socket)], env)
    direct = run([sys.executable, "-m", "prefect.engine"], env)
    # No server at that path: the client runs the engine itself.
    fallback = run([*CLIENT, str(tmp_path / "nobody.sock")], env)
    for done in (forked, direct, fallback):
        assert done.returncode == 1, done
        assert "Invalid flow run id" in done.stderr + done.stdout
    assert "Warning" not in forked.stderr, forked.stderr  # nothing the engine would not print
    assert "flow run not-a-uuid: engine pid" in server.log.read_text()
    assert "engine pid" in server.log.read_text().split("not-a-uuid")[1]  # its exit, reaped


def test_a_forked_engine_logs_as_its_runs_environment_says_not_as_the_servers(
    server: Server,
) -> None:
    """The fork sets Prefect's logging up again when the run's settings or logging variables
    differ from the server's: here the run's level hides the error the first test's run logs.
    (`python -m prefect.engine` logs that one error whatever the level, so it is not compared.)"""
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": "not-a-uuid", "PREFECT_LOGGING_LEVEL": "CRITICAL"}
    forked = run([*CLIENT, str(server.socket)], env)
    assert forked.returncode == 1, forked
    assert "Invalid flow run id" not in forked.stderr + forked.stdout, forked
    assert "flow run not-a-uuid: engine pid" in server.log.read_text()


def test_a_killed_run_process_takes_its_engine_and_sigterm_reaches_it(
    server: Server, silent_api: str
) -> None:
    for signum in (signal.SIGKILL, signal.SIGTERM):
        run_id = str(uuid.uuid4())
        env = {**os.environ, "PREFECT__FLOW_RUN_ID": run_id, "PREFECT_API_URL": silent_api}
        client = subprocess.Popen([*CLIENT, str(server.socket)], env=env, text=True)
        engine = wait_for_engine(server, run_id)
        time.sleep(0.5)
        assert not gone(engine), "the engine should wait on the silent API"
        client.send_signal(signum)
        client.wait(timeout=30)
        ended = wait_for_end(server, engine)
        if signum == signal.SIGKILL:  # the client is gone: the server killed its engine
            assert ended == "signal 9"
        else:  # the client forwarded SIGTERM; it ends as its engine did
            assert ended != "signal 9" and client.returncode != 0, (ended, client.returncode)
    assert server.process.poll() is None


def test_code_changed_on_disk_is_never_forked_stale(server: Server, tmp_path: Path) -> None:
    module = tmp_path / "site" / "sitecustomize.py"
    later = time.time() + 10
    os.utime(module, (later, later))
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": "not-a-uuid"}
    done = run([*CLIENT, str(server.socket)], env)
    # The client ran the engine itself, from what is on disk now ...
    assert done.returncode == 1 and "Invalid flow run id" in done.stderr + done.stdout
    assert "engine pid" not in server.log.read_text()
    # ... and the server, with no run left, exits for its supervisor to start it afresh.
    server.process.wait(timeout=30)
    assert "code changed on disk" in server.log.read_text()


def test_the_shipyard_command_runs_release_as_a_fork_and_answers_as_it_would_itself(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`shipyard release` with the stack's engine server up is a fork of it: the same output on
    the same streams, the same exit code as the command run in its own process; other
    commands, and a client of another install, run in their own process."""
    shipyard = str(Path(sys.executable).parent / "shipyard")
    env = {**os.environ, "SHIPYARD_STACK_DIR": str(tmp_path)}
    for argv in (["release", "--help"], ["release", "examples/x", "--strategy", "sideways"]):
        forked = run([shipyard, *argv], env)
        itself = run([shipyard, *argv], {**env, "SHIPYARD_NO_FORK": "1"})
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            itself.returncode,
            itself.stdout,
            itself.stderr,
        )
    assert forked.returncode == 2 and "sideways" in forked.stderr
    assert server.log.read_text().count("engine-server: shipyard release: pid") == 2
    assert run([shipyard, "audit", "--help"], env).returncode == 0
    assert "shipyard audit" not in server.log.read_text()

    monkeypatch.setattr(engine_client, "PACKAGE", str(tmp_path / "another-install"))
    assert (
        engine_client.forward(str(server.socket), "shipyard.launcher", ["release", "--help"])
        is None
    )
    assert "another install's client" in server.log.read_text()
