"""The stack's Prefect server takes credentials: its API and its events websocket refuse a
client without the stack's auth string and serve one with it (Prefect's own client too, CSRF
token and all); CORS answers only its own UI's origin. What the stack writes is its owner's
only (0700 directories, 0600 files), and `stack up` tightens what an older one left open.

The server is the stack's own, started by `shipyard.stack.services` under the supervisord of a
temporary stack directory (not the default stack's)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from shipyard.deploy.containers import free_port
from shipyard.settings import Settings
from shipyard.stack import credentials, services, supervisor
from shipyard.stack import state as stack_state

PREFECT_PROTOCOL = Subprotocol("prefect")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The stack's Prefect server alone, on a free port, in a temporary stack directory."""
    root = tmp_path_factory.mktemp("control-plane")
    settings = Settings(
        stack_dir=root / "stack", state_dir=root / "state", prefect_port=free_port("127.0.0.1")
    )
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PREFECT_API_URL", raising=False)  # the stack's own server, not a team's
        env.delenv("PREFECT_API_AUTH_STRING", raising=False)
        try:
            services.start(settings, "prefect-server", print)
            yield settings
        finally:
            supervisor.shutdown(settings, print)


def api(settings: Settings) -> str:
    return credentials.stack_api(settings)


@pytest.mark.services
def test_the_api_refuses_a_request_without_the_auth_string_and_serves_one_with_it(
    stack: Settings,
) -> None:
    auth = credentials.read_prefect_auth(stack)
    assert auth is not None and auth.startswith("shipyard:")
    url, version = f"{api(stack)}/flows/filter", f"{api(stack)}/admin/version"
    wrong = credentials.basic_auth_header("shipyard:guess")
    assert httpx.get(version, timeout=10).status_code == 401
    assert httpx.get(version, headers=wrong, timeout=10).status_code == 401
    # A change without credentials meets the CSRF check first (403), or the auth check (401).
    assert httpx.post(url, json={}, timeout=10).status_code in (401, 403)
    good = credentials.basic_auth_header(auth)
    assert httpx.get(version, headers=good, timeout=10).status_code == 200
    # A change needs a CSRF token as well, which only an authenticated client can get.
    refused = httpx.post(url, json={}, headers=good, timeout=10)
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert httpx.get(f"{api(stack)}/csrf-token?client=t", timeout=10).status_code == 401
    token = httpx.get(f"{api(stack)}/csrf-token?client=t", headers=good, timeout=10).json()
    csrf = {"Prefect-Csrf-Token": token["token"], "Prefect-Csrf-Client": "t"}
    assert httpx.post(url, json={}, headers={**good, **csrf}, timeout=10).status_code == 200
    with contextlib.closing(credentials.http_client(stack)) as client:  # for scripts, tests
        assert client.post(url, json={}).status_code == 200
    # Health stays open: supervisord's checks and `stack status` ask it.
    assert httpx.get(f"{api(stack)}/health", timeout=10).status_code == 200


@pytest.mark.services
def test_prefect_clients_with_the_stack_credentials_work_and_without_them_fail(
    stack: Settings,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    pool = WorkPoolCreate(name="control-plane", type="process")
    with temporary_settings({PREFECT_API_URL: api(stack)}), get_client(sync_client=True) as c:
        with pytest.raises(PrefectHTTPStatusError) as denied:
            c.create_work_pool(pool)
        assert denied.value.response.status_code in (401, 403)
    # What the CLI does before it runs a flow: the stack's server, its credentials from its file.
    env: dict[str, str] = {}
    assert credentials.use_stack_prefect(stack, env, answers=True) == api(stack)
    assert env["PREFECT_API_AUTH_STRING"] == credentials.read_prefect_auth(stack)
    given = {
        PREFECT_API_URL: env["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"],
    }
    with temporary_settings(given), get_client(sync_client=True) as client:
        client.create_work_pool(pool)  # a change: Basic auth, and a CSRF token fetched first
        assert client.read_work_pool("control-plane").type == "process"


def events_socket(settings: Settings) -> str:
    return api(settings).replace("http://", "ws://") + "/events/in"


@pytest.mark.services
def test_the_events_websocket_closes_without_the_auth_string_and_accepts_it(
    stack: Settings,
) -> None:
    auth = credentials.read_prefect_auth(stack)
    assert auth is not None
    # No "prefect" subprotocol (no auth handshake): the upgrade itself is refused.
    with pytest.raises(InvalidStatus) as rejected:
        connect(events_socket(stack), open_timeout=10)
    assert rejected.value.response.status_code == 403
    for token in (None, "shipyard:guess"):  # the handshake's first message holds no good token
        with (
            connect(events_socket(stack), subprotocols=[PREFECT_PROTOCOL], open_timeout=10) as ws,
            pytest.raises(ConnectionClosed) as closed,
        ):
            ws.send(json.dumps({"type": "auth", "token": token}))
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with connect(events_socket(stack), subprotocols=[PREFECT_PROTOCOL], open_timeout=10) as ws:
        ws.send(json.dumps({"type": "auth", "token": auth}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "auth_success"}


@pytest.mark.services
def test_cors_answers_only_the_ui_origin(stack: Settings) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(
            f"{api(stack)}/flows/filter",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            timeout=10,
        )

    own = credentials.ui_origin(stack)
    assert preflight(own).headers.get("access-control-allow-origin") == own
    assert "access-control-allow-origin" not in preflight("http://evil.example").headers


@pytest.mark.services
def test_what_the_stack_writes_is_its_owners_only(stack: Settings) -> None:
    directory = stack.stack_dir
    assert mode(directory) == 0o700
    for name in ("prefect-auth", "supervisord.conf", "supervisord.log", "prefect-server.log"):
        assert mode(directory / name) == 0o600, name
    assert mode(directory / "supervisor.d" / "prefect-server.conf") == 0o600
    assert mode(directory / "supervisor.d") == 0o700
    database = directory / "prefect" / "prefect.db"  # written by the server (umask 077)
    assert database.is_file() and mode(database) == 0o600
    # The secret travels in the (0600) program file, never on a command line.
    auth = credentials.read_prefect_auth(stack)
    pid = supervisor.info(stack, "prefect-server")["pid"]
    assert auth is not None and auth not in Path(f"/proc/{pid}/cmdline").read_text()


@pytest.mark.unit
def test_stack_up_tightens_what_an_older_stack_left_open(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path / "stack", state_dir=tmp_path / "state")
    for directory in (settings.stack_dir / "prefect", settings.state_dir):
        directory.mkdir(parents=True, mode=0o755)
    os.chmod(settings.stack_dir, 0o755)
    old = {
        settings.stack_dir / "registry-password": 0o644,
        settings.stack_dir / "dockerd.log.1": 0o644,
        settings.stack_dir / "prefect" / "prefect.db": 0o664,
        settings.state_dir / "audit.jsonl": 0o644,
        settings.state_dir / "mlflow.db": 0o644,
        settings.stack_dir / "tool": 0o755,
    }
    for path, old_mode in old.items():
        path.write_text("x")
        os.chmod(path, old_mode)
    assert stack_state.tighten(settings) == [settings.stack_dir, settings.state_dir.resolve()]
    assert mode(settings.stack_dir) == mode(settings.state_dir) == 0o700
    assert mode(settings.stack_dir / "prefect") == 0o700
    assert {p.name: mode(p) for p in old} == {
        "registry-password": 0o600,
        "dockerd.log.1": 0o600,
        "prefect.db": 0o600,
        "audit.jsonl": 0o600,
        "mlflow.db": 0o600,
        "tool": 0o700,  # an executable stays one, for its owner
    }
    fresh = Settings(stack_dir=tmp_path / "new" / "stack", state_dir=tmp_path / "new" / "state")
    stack_state.tighten(fresh)
    assert mode(fresh.stack_dir) == mode(fresh.state_dir) == 0o700
    stack_state.write(fresh, {"started": {}})
    assert mode(fresh.stack_file) == 0o600
