"""`shipyard stack up` with its services, as a user runs it: a Prefect server and worker, an
MLflow server, the webhook receiver, the deployments; a release started through the Prefect
API on that stack, checked in the real Prefect UI (headless Chromium); `stack down` stops only
what it started."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from shipyard import engine
from shipyard.deploy import containers
from shipyard.settings import Settings
from shipyard.stack import credentials as control_plane
from shipyard.stack.engine import apt_install
from tests.support.projects import commit_all
from tests.support.stacks import stack_env

SHIPYARD = str(Path(sys.executable).parent / "shipyard")
PREFECT = str(Path(sys.executable).parent / "prefect")
MODEL = "digits-sklearn"


def chromium_binary() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        if os.geteuid() != 0:
            pytest.fail("Debian's chromium is missing: apt-get install chromium")
        apt_install("chromium", print)
        binary = "chromium"
    return binary


class DevTools:
    """One page of a headless Chromium, driven over the Chrome DevTools Protocol."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket, self.last = socket, 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last += 1
        self.socket.send(json.dumps({"id": self.last, "method": method, "params": params}))
        while True:  # events in between are not asked for
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.last:
                assert "error" not in message, f"{method}: {message['error']}"
                return dict(message.get("result", {}))


def ui_page(
    url: str, auth: str, expect: list[str], screenshot: Path | None = None, timeout_s: float = 60
) -> str:
    """The DOM of a Prefect UI page once it shows every `expect` text (or after `timeout_s`),
    as a user logged in sees it: the UI keeps the auth string it asked for, base64, in local
    storage under `prefect-password`; it is put there before the page's own scripts run
    (through the DevTools socket, never on Chromium's command line)."""
    scratch = Path(tempfile.mkdtemp(prefix="chromium-"))
    profile = scratch / "profile"
    browser = subprocess.Popen(
        [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--window-size=1400,1100",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(scratch)},  # its org.chromium.Chromium.* files too
        start_new_session=True,
    )
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.is_file() and active.read_text().strip()):
            assert time.monotonic() < deadline, "chromium opened no DevTools port within 30 s"
            time.sleep(0.1)
        port = active.read_text().split()[0]
        target = httpx.put(f"http://127.0.0.1:{port}/json/new?about:blank", timeout=10).json()
        with connect(target["webSocketDebuggerUrl"], max_size=None) as socket:
            page = DevTools(socket)
            page.call("Page.enable")  # else the script below may miss the first document
            stored = base64.b64encode(auth.encode()).decode()
            page.call(
                "Page.addScriptToEvaluateOnNewDocument",
                source=f"localStorage.setItem('prefect-password', {json.dumps(stored)})",
            )
            page.call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout_s
            while True:
                evaluated = page.call(
                    "Runtime.evaluate",
                    expression="document.documentElement.outerHTML",
                    returnByValue=True,
                )["result"]
                # Between two documents (the UI redirects) there is none to read yet.
                dom = str(evaluated.get("value") or "")
                if all(text in dom for text in expect) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if screenshot is not None:
                shot = page.call("Page.captureScreenshot", format="png")["data"]
                screenshot.write_bytes(base64.b64decode(shot))
            return dom
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # its helpers, still writing the profile
            os.killpg(browser.pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_the_stack_runs_a_release_the_ui_shows_and_down_stops_only_its_services(
    tmp_path: Path, sklearn_repo: Path, docker_stack: dict[str, str]
) -> None:
    port = containers.free_port("127.0.0.1")
    with (sklearn_repo / "shipyard.yaml").open("a") as manifest:
        manifest.write(f"deploy: {{port: {port}, keep_blue_seconds: 1}}\n")
    commit_all(sklearn_repo, "Serve on a test port")
    credentials = engine.registry_login(Settings())
    env, ports = stack_env(tmp_path, docker_stack["base_image"])

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        # From tmp_path: the worker's runs resolve a relative source from there.
        done = subprocess.run(
            [SHIPYARD, *args], capture_output=True, text=True, env=env, timeout=timeout,
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    urls = json.loads(run("stack", "up", "--json").stdout.splitlines()[-1])
    api = urls["prefect_api"]
    auth = Path(urls["prefect_auth_file"]).read_text().strip()
    stack = Settings(stack_dir=tmp_path / "stack", prefect_port=ports["prefect"])
    prefect = control_plane.http_client(stack)  # Basic auth and a CSRF token, as Prefect's client
    assert (
        prefect.headers["Authorization"] == control_plane.basic_auth_header(auth)["Authorization"]
    )
    try:
        # The control plane takes credentials; MLflow answers on loopback only.
        assert httpx.get(f"{api}/flows", timeout=10).status_code == 401
        assert urls["mlflow_ui"].startswith("http://127.0.0.1:")
        status = json.loads(run("stack", "status").stdout)
        for part in ("prefect-server", "mlflow-server", "webhook"):
            assert status[part].startswith("healthy") and "started by shipyard" in status[part]
        # supervisord calls a program RUNNING once it has stayed up for its startsecs.
        deadline = time.monotonic() + 60
        while (
            status["prefect-worker"].startswith("down") and "STARTING" in status["prefect-worker"]
        ):
            assert time.monotonic() < deadline, status["prefect-worker"]
            time.sleep(1)
            status = json.loads(run("stack", "status").stdout)
        assert status["prefect-worker"].startswith("running")
        assert "nothing" not in status["engine"]

        # Start a release the way the UI's "Run" button does: on the registered deployment,
        # with a source relative to the directory `stack up` ran in.
        source = sklearn_repo.relative_to(tmp_path)
        started = subprocess.run(
            [PREFECT, "deployment", "run", "release/release", "--param", f"source={source}",
             "--param", "ref=main"],
            capture_output=True, text=True, env={**env, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": auth}, timeout=120,
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            flow_run = prefect.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
            if flow_run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
        assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
        # The worker's run reached the SQLite store through the stack's MLflow server.
        served = tmp_path / "stack" / "mlflow-server.log"
        assert "POST /api/2.0/mlflow/model-versions/create" in served.read_text()
        # Its engine was forked by the stack's engine server, not started as a new interpreter,
        # and loaded the flow from its entrypoint without the pull step (its directory came
        # from the deployment: the relative source above resolved).
        forked = (tmp_path / "stack" / "engine-server.log").read_text()
        assert f"flow run {run_id}: engine pid" in forked, forked[-2000:]
        logs = prefect.post(
            f"{api}/logs/filter",
            json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
            timeout=10,
        ).json()
        assert any("Beginning flow run" in entry["message"] for entry in logs), logs[:5]
        assert not [entry for entry in logs if "pull step" in entry["message"]]

        # The server's scheduler turned prefect.yaml's nightly cron into runs at 03:00 UTC.
        deadline = time.monotonic() + 90
        while True:
            nightly = prefect.post(
                f"{api}/flow_runs/filter",
                json={
                    "flows": {"name": {"any_": ["nightly-rebuild"]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                },
                timeout=10,
            ).json()
            if nightly or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert nightly, "the scheduler created no nightly-rebuild run"
        assert {r["expected_start_time"][11:16] for r in nightly} == {"03:00"}

        # Each task run by its own name (`deploy-1a2`), as the page's log rows show it: text
        # that only the task runs produce (the nav's "Deployments" contains "deploy").
        task_runs = prefect.post(
            f"{api}/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [run_id]}}},
            timeout=10,
        ).json()
        names = {t["name"].rpartition("-")[0]: t["name"] for t in task_runs}
        shown_stages = [
            f"<div>{names[s]}</div>"
            for s in ("build_image", "push_image", "deploy", "crown", "retire")
        ]
        screenshot = tmp_path / "prefect-ui-flow-run.png"
        page = ui_page(
            f"{urls['prefect_ui']}/runs/flow-run/{run_id}",
            auth,
            [flow_run["name"], "Completed", *shown_stages],
            screenshot,
        )
        assert flow_run["name"] in page and "Completed" in page
        for shown in shown_stages:
            assert shown in page, f"the page does not show {shown}"
        assert screenshot.stat().st_size > 20_000
        print(f"screenshot: {screenshot}")
        # A browser with a wrong auth string sees the UI's login, not the run.
        refused = ui_page(
            f"{urls['prefect_ui']}/runs/flow-run/{run_id}", "shipyard:guess", ["failed"], None, 30
        )
        assert "Authentication failed" in refused and flow_run["name"] not in refused

        artifacts = prefect.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
            timeout=10,
        ).json()
        report = next(a for a in artifacts if a["key"] == f"{MODEL}-release-report")
        assert {a["key"] for a in artifacts} >= {f"{MODEL}-variants", f"{MODEL}-release-report"}
        shown = ui_page(
            f"{urls['prefect_ui']}/artifacts/artifact/{report['id']}",
            auth,
            [f"Release report of {MODEL}", f"127.0.0.1:{port}"],
        )
        assert f"Release report of {MODEL}" in shown
        assert f"127.0.0.1:{port}" in shown  # the endpoint it deployed to

        # The MLflow server reads the same store: its API names the deployed champion.
        model = httpx.get(
            f"{urls['mlflow_ui']}/api/2.0/mlflow/registered-models/get",
            params={"name": MODEL},
            timeout=10,
        ).json()["registered_model"]
        assert any(a["alias"] == "champion" for a in model["aliases"])

        # The CLI finds the stack's servers by itself: its runs show in the same UI, and it
        # reads the registry through the same MLflow server.
        asked = served.read_text().count("GET /api/2.0/mlflow/registered-models/alias")
        done = run("promote", MODEL, "--version", "champion", "--json")
        assert served.read_text().count("GET /api/2.0/mlflow/registered-models/alias") > asked
        promoted = json.loads(done.stdout.splitlines()[-1])
        assert promoted["endpoint"] == f"http://127.0.0.1:{port}"
        runs = prefect.post(
            f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["promote"]}}}, timeout=10
        ).json()
        assert [r["state"]["type"] for r in runs] == ["COMPLETED"]
        run("undeploy", MODEL)
        trail = [json.loads(line) for line in run("audit", MODEL, "--json").stdout.splitlines()]
        assert [(e["action"], e["outcome"]) for e in trail] == [
            ("release", "deployed"),
            ("promote", "succeeded"),
            ("undeploy", "succeeded"),
        ]
        assert trail[0]["who"]["started_by"] == (
            "the Prefect API (deployment run; this server records no user)"
        )
        assert trail[1]["who"]["started_by"] == "a process running the flow directly (CLI)"

        # With the stack's engine server up, `shipyard release` runs as a fork of it (Prefect,
        # MLflow and the flows imported already): its summary is stdout's last line, as ever.
        released = run("release", str(sklearn_repo), "--until", "register", "--json")
        assert json.loads(released.stdout.splitlines()[-1])["model"] == MODEL
        forked = (tmp_path / "stack" / "engine-server.log").read_text()
        assert "engine-server: shipyard release: pid" in forked, forked[-2000:]
    finally:
        prefect.close()
        # A failure above may leave the release's endpoint running: no containers stay behind.
        subprocess.run(
            [SHIPYARD, "undeploy", MODEL], env=env, capture_output=True, timeout=120, cwd=tmp_path
        )
        subprocess.run([SHIPYARD, "stack", "down"], env=env, capture_output=True, timeout=120)

    for name in ("prefect", "mlflow", "webhook"):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{ports[name]}/", timeout=2)
    engine.engine(Settings())  # the engine this stack found running still answers
    assert httpx.get(f"http://{credentials.address}/v2/", timeout=5).status_code == 401


@pytest.mark.unit
def test_a_team_server_configured_in_the_environment_is_used_not_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shipyard.stack import services

    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.team.example/api")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.team.example")
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "s")
    settings = Settings(state_dir=tmp_path / "state", stack_dir=tmp_path / "stack")
    plan = {service.name: service for service in services.plan(settings)}
    assert sorted(plan) == ["prefect-worker", "webhook"]
    worker = plan["prefect-worker"].env
    assert worker["PREFECT_API_URL"] == "http://prefect.team.example/api"
    assert worker["SHIPYARD_MLFLOW_UI_URL"] == "https://mlflow.team.example"
    assert plan["webhook"].env["PREFECT_API_URL"] == "http://prefect.team.example/api"

    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    own = {service.name for service in services.plan(Settings(stack_dir=tmp_path / "stack"))}
    assert own == {"prefect-server", "mlflow-server", "engine-server", "prefect-worker", "webhook"}


@pytest.mark.services
def test_a_docker_pool_run_reads_its_secrets_from_their_blocks(prefect_server: str) -> None:
    """What `stack up --pool docker` saves, a run's command reads into its environment; a
    missing block stops the run with a message naming it, the variable and the fix."""
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    from shipyard.stack import docker_pool, pool_run

    key = "k-carried-" + os.urandom(4).hex()
    Secret(value=SecretStr(key)).save(
        docker_pool.block_name("SHIPYARD_SERVE_API_KEY"), overwrite=True
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        pool_run.ENV_FROM_BLOCKS: "SHIPYARD_SERVE_API_KEY=shipyard-env-shipyard-serve-api-key",
    }
    show = "import os; print(os.environ['SHIPYARD_SERVE_API_KEY'], 'SHIPYARD_ENV_FROM_BLOCKS' in os.environ)"
    ran = subprocess.run(
        [sys.executable, "-m", "shipyard.stack.pool_run", "--", sys.executable, "-c", show],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == [key, "False"]

    env[pool_run.ENV_FROM_BLOCKS] = "MLFLOW_TRACKING_TOKEN=shipyard-env-no-such-block"
    missing = subprocess.run(
        [sys.executable, "-m", "shipyard.stack.pool_run", "--", "true"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 1
    assert (
        "MLFLOW_TRACKING_TOKEN: cannot read Prefect Secret block 'shipyard-env-no-such-block'"
        in missing.stderr
    )
    assert "run it again with MLFLOW_TRACKING_TOKEN set" in missing.stderr


@pytest.mark.services
def test_saving_the_pools_blocks_deletes_those_of_secrets_no_longer_set(
    prefect_server: str,
) -> None:
    """`stack up --pool docker` again without a secret set: its block, and the value in it, is
    deleted from Prefect's database; the blocks of secrets still set, and Secret blocks that are
    not the pool's, stay."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from pydantic import SecretStr

    from shipyard.engine import RegistryLogin
    from shipyard.stack import docker_pool

    login = RegistryLogin("127.0.0.1:5000", "shipyard", "p-" + os.urandom(4).hex())
    api = {"PREFECT_API_URL": prefect_server}
    team = "team-secret-" + os.urandom(4).hex()
    Secret(value=SecretStr("theirs")).save(team, overwrite=True)
    said: list[str] = []
    token = "t-" + os.urandom(4).hex()
    both = {"SHIPYARD_SERVE_API_KEY": "k1", "MLFLOW_TRACKING_TOKEN": token}
    docker_pool.save_blocks(api, login, both, said.append)
    assert Secret.load("shipyard-env-mlflow-tracking-token").get() == token

    docker_pool.save_blocks(api, login, {"SHIPYARD_SERVE_API_KEY": "k2"}, said.append)

    with get_client(sync_client=True) as client:
        names = {d.name for d in client.read_block_documents_by_type("secret")}
    assert "shipyard-env-mlflow-tracking-token" not in names
    assert {"shipyard-env-shipyard-serve-api-key", team, "shipyard-registry-password"} <= names
    assert Secret.load("shipyard-env-shipyard-serve-api-key").get() == "k2"
    assert said == [
        "docker pool: deleted the Secret block shipyard-env-mlflow-tracking-token (its setting "
        "is not set)"
    ]
    assert not any(token in line or login.password in line for line in said)


@pytest.mark.unit
def test_the_docker_pool_is_chosen_recorded_and_keeps_secrets_out_of_its_runs_template(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shipyard.errors import StackError
    from shipyard.stack import docker_pool, pool_run, services

    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "s")
    settings = Settings(state_dir=tmp_path / "state", stack_dir=tmp_path / "stack")
    assert services.pool(settings) == services.Pool("process", 1)
    with pytest.raises(StackError, match="expected one of \\['process', 'docker'\\]"):
        services.parse_pool("kubernetes", None)
    with pytest.raises(StackError, match="--workers 3 with the process pool"):
        services.parse_pool("process", 3)

    chosen = services.parse_pool("docker", 3)
    services.record_pool(settings, chosen)
    assert services.pool(settings) == chosen
    plan = {service.name: service for service in services.plan(settings)}
    workers = [name for name in plan if name.startswith("prefect-docker-worker-")]
    assert workers == [f"prefect-docker-worker-{i}" for i in (1, 2, 3)]
    assert "prefect-worker" not in plan and "engine-server" not in plan
    args = plan["prefect-docker-worker-2"].args
    assert args[args.index("--pool") + 1] == docker_pool.POOL
    assert args[args.index("--limit") + 1] == "1"

    worker = services.worker_env(settings)
    env = docker_pool.run_env({"SHIPYARD_REGISTRY_PASSWORD": "pw", "HOME": "/root"}, worker)
    assert env["SHIPYARD_STATE_DIR"] == str((tmp_path / "state").resolve())
    assert "pw" not in env.values() and "HOME" not in env
    assert not any(name.startswith("PREFECT_API") for name in env)  # the worker passes its own
    # A secret a run needs is named with its Secret block, never given as a value.
    given = {"SHIPYARD_SERVE_API_KEY": "k-secret", "MLFLOW_TRACKING_PASSWORD": "m-secret"}
    env = docker_pool.run_env(given, worker)
    assert "k-secret" not in json.dumps(env) and "m-secret" not in json.dumps(env)
    assert env[pool_run.ENV_FROM_BLOCKS] == (
        "MLFLOW_TRACKING_PASSWORD=shipyard-env-mlflow-tracking-password,"
        "SHIPYARD_SERVE_API_KEY=shipyard-env-shipyard-serve-api-key"
    )
    assert docker_pool.secrets(given, worker) == dict(sorted(given.items()))

    mounts = docker_pool.volumes(settings, tmp_path)
    assert "/var/run/docker.sock:/var/run/docker.sock" in mounts
    for shared in (tmp_path, (tmp_path / "state").resolve(), (tmp_path / "stack").resolve()):
        assert f"{shared}:{shared}" in mounts


@pytest.mark.unit
def test_docker_pool_runs_get_the_hosts_pip_index_and_ca_with_urls_in_blocks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A run's container has none of the host's pip files: `stack up --pool docker` asks pip
    (real pip: files and variables) what `pip download` would use here, and carries it."""
    from shipyard.errors import StackError
    from shipyard.stack import docker_pool, pool_run, services

    ca = tmp_path / "corporate-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n")
    home = tmp_path / "home"
    # Two user files: pip reads ~/.pip/pip.conf, then ~/.config/pip/pip.conf, which wins.
    (home / ".pip").mkdir(parents=True)
    (home / ".pip" / "pip.conf").write_text("[global]\nindex-url = https://legacy.example/s\n")
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(
        "[global]\nindex-url = https://ci-user:tok-3f9a@index.example/simple\n"
        "proxy = http://global-proxy.example:3128\n"
        "[download]\nproxy = http://download-proxy.example:3128\n"
    )
    monkeypatch.setenv("HOME", str(home))
    for variable in ("XDG_CONFIG_HOME", "PIP_CONFIG_FILE", "PIP_INDEX_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PIP_PROXY", "")  # empty: pip goes on to the files
    monkeypatch.setenv(
        "PIP_EXTRA_INDEX_URL", "file:///srv/local/simple https://mirror.example/s?token=abc-9"
    )
    monkeypatch.setenv("PIP_TRUSTED_HOST", "mirror.example")
    monkeypatch.setenv("PIP_CERT", str(ca))
    settings = Settings(state_dir=tmp_path / "state", stack_dir=tmp_path / "stack")
    settings.stack_dir.mkdir()
    said: list[str] = []

    pip = docker_pool.pip_env(settings, said.append)
    copy = settings.stack_dir / docker_pool.PIP_CA
    assert pip == {
        "PIP_INDEX_URL": "https://ci-user:tok-3f9a@index.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://mirror.example/s?token=abc-9",
        "PIP_TRUSTED_HOST": "mirror.example",
        "PIP_PROXY": "http://download-proxy.example:3128",  # [download] over [global]
        "PIP_CERT": str(copy.resolve()),
    }
    assert copy.read_bytes() == ca.read_bytes()  # under the stack directory every run mounts
    assert said == [
        "docker pool: pip's extra-index-url file:///srv/local/simple is not HTTP(S): "
        "runs do not use it"
    ]

    # Index and proxy URLs may hold tokens anywhere: the template names their blocks.
    env = docker_pool.run_env({}, services.worker_env(settings), pip)
    assert "tok-3f9a" not in json.dumps(env) and "abc-9" not in json.dumps(env)
    assert env[pool_run.ENV_FROM_BLOCKS] == (
        "PIP_EXTRA_INDEX_URL=shipyard-env-pip-extra-index-url,"
        "PIP_INDEX_URL=shipyard-env-pip-index-url,PIP_PROXY=shipyard-env-pip-proxy"
    )
    assert env["PIP_CERT"] == str(copy.resolve()) and env["PIP_TRUSTED_HOST"] == "mirror.example"

    # A local index with credentials is named without them; pip's default index is not carried.
    monkeypatch.setenv("PIP_INDEX_URL", "file://u:pw-77@host/simple")
    said.clear()
    assert "PIP_INDEX_URL" not in docker_pool.pip_env(settings, said.append)
    assert (
        said[0]
        == "docker pool: pip's index-url file://host/simple is not HTTP(S): runs do not use it"
    )
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.org/simple")
    assert "PIP_INDEX_URL" not in docker_pool.pip_env(settings, said.append)

    # A configuration pip cannot read fails `stack up`, without the token of the line it quotes.
    broken = tmp_path / "broken.conf"
    broken.write_text("index-url = https://ci-user:tok-77@index.example/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(broken))
    with pytest.raises(StackError, match="no section headers") as raised:
        docker_pool.pip_env(settings, said.append)
    assert "tok-77" not in str(raised.value) and "//…@index.example" in str(raised.value)


@pytest.mark.unit
def test_a_lock_pip_cannot_download_fails_with_pips_error_and_the_locks_path(
    tmp_path: Path,
) -> None:
    from shipyard.errors import ImageError
    from shipyard.image.context import wheelhouse

    lock = tmp_path / "requirements.lock"
    lock.write_text(f"tabulate==0.0.1 --hash=sha256:{'0' * 64}\n")
    with pytest.raises(ImageError) as raised:
        wheelhouse(tmp_path / "wheels", lock)
    message = str(raised.value)
    assert f"wheels locked in {lock} failed" in message
    assert "ERROR: No matching distribution found for tabulate==0.0.1" in message
    assert "WARNING" not in message and "serving" not in message
    assert not list((tmp_path / "wheels").rglob(".complete"))  # nothing counts as downloaded
