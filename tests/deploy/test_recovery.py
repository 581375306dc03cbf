"""`recover` (what `shipyard stack up` runs for every recorded endpoint) on the shared endpoint:
a rollout killed mid-way is undone, a slot container removed by hand is run again from its
image, a stopped proxy is started again; and a killed proxy comes back by itself.

Every test starts with one version serving (`Endpoint.settle`) and leaves one serving.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from docker.errors import NotFound
from docker.models.containers import Container
from prefect import get_client
from prefect.settings import PREFECT_API_URL

from shipyard import engine
from shipyard.deploy.endpoint import recover
from shipyard.deploy.proxy import Proxy
from shipyard.flows.rollout import rollout_lock
from shipyard.stack.engine import recover_endpoints
from shipyard.waiting import wait_until
from tests.support.endpoints import MODEL, SHIPYARD, Endpoint, served_version

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]


def proxy_of(endpoint: Endpoint) -> Proxy:
    d = endpoint.deployment()
    client = engine.engine(endpoint.settings)
    return Proxy(endpoint.settings.deploy_dir / MODEL, d.host, d.port, client)


def proxy_container(endpoint: Endpoint) -> Container:
    container = proxy_of(endpoint).container()
    assert container is not None, "the endpoint has no proxy container"
    return container


def answers(url: str) -> bool:
    try:
        served_version(url)
    except Exception:
        return False
    return True


def start_canary(endpoint: Endpoint, version: str, log: Path) -> subprocess.Popen[bytes]:
    """`shipyard promote --strategy canary` in its own process group (as a user runs it), its
    output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [SHIPYARD, "promote", MODEL, "--version", version, "--strategy", "canary"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "SHIPYARD_STATE_DIR": str(endpoint.settings.state_dir),
                "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            },
        )


def free_deploy_lock() -> None:
    """A killed rollout never released the model's deploy slot: Prefect holds it until the
    lease expires (5 min). A new limit of the same name frees it for the next test's rollouts."""
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(f"deploy-{MODEL}")
    rollout_lock(MODEL)


def deploy_slots_taken() -> int:
    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(f"deploy-{MODEL}").active_slots)


def test_a_rollout_cut_off_mid_way_is_undone(
    endpoint: Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = endpoint.previous()
    aliases = endpoint.aliases()
    champion = aliases["champion"]
    log = tmp_path / "promote.log"
    process = start_canary(endpoint, previous, log)
    try:
        deadline = time.monotonic() + 60
        while not (d := endpoint.deployment()).candidate or not d.weights.get(d.candidate):
            assert process.poll() is None, f"the promote exited early: {log.read_text()}"
            assert time.monotonic() < deadline, f"the canary never took traffic: {log.read_text()}"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # Half-switched: the canary recorded, with traffic, by the process that is gone.
    d = endpoint.deployment()
    assert d.candidate is not None and d.live is not None
    assert d.rollout_by is not None and d.rollout_by["pid"] == process.pid
    candidate = d.instances[d.candidate]
    assert candidate.version == previous and d.weights[d.candidate] > 0
    assert proxy_of(endpoint).stats()[d.candidate].weight > 0

    try:
        # The dead process's lease still holds the model's deploy lock; `stack up`'s recovery
        # (on the Prefect server the flows use) frees it with the undo.
        assert deploy_slots_taken() == 1
        monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
        done = recover_endpoints(endpoint.settings, lambda _: None)[MODEL]
        assert deploy_slots_taken() == 0
    finally:
        if deploy_slots_taken():
            free_deploy_lock()  # so that the next tests' rollouts do not wait 5 minutes

    assert done.endswith("; its deploy lock freed"), done
    assert f"the rollout of v{previous} was cut off: undone" in done, done
    assert done.startswith(f"v{champion} serves {endpoint.url}"), done
    after = endpoint.deployment()
    assert after.candidate is None and after.rollout_by is None
    assert after.live == d.live and list(after.instances) == [d.live]
    assert after.weights == {d.live: 100}
    with pytest.raises(NotFound):
        engine.engine(endpoint.settings).containers.get(candidate.container_id)
    assert [served_version(endpoint.url) for _ in range(20)] == [champion] * 20
    assert endpoint.aliases() == aliases


def test_a_slot_container_removed_by_hand_is_run_again_from_its_image(
    endpoint: Endpoint,
) -> None:
    client = engine.engine(endpoint.settings)
    d = endpoint.deployment()
    assert d.live is not None
    live = d.instances[d.live]
    client.containers.get(live.container_id).remove(force=True)

    done = recover(endpoint.settings, MODEL)

    assert f"{d.live} v{live.version} run again from {live.image}" in done, done
    after = endpoint.deployment()
    assert after.live == d.live and after.weights == {d.live: 100}
    rerun = after.instances[d.live]
    assert rerun.container_id != live.container_id and rerun.image == live.image
    assert client.containers.get(rerun.container_id).status == "running"
    # Served as soon as recover says so: not once HAProxy's next health check sees the slot UP.
    assert served_version(endpoint.url) == live.version


def test_a_stopped_proxy_is_started_again(endpoint: Endpoint) -> None:
    version = endpoint.aliases()["champion"]
    proxy_container(endpoint).stop(timeout=5)
    assert not answers(endpoint.url)

    done = recover(endpoint.settings, MODEL)

    assert done == f"v{version} serves {endpoint.url}", done
    assert proxy_container(endpoint).status == "running"
    assert served_version(endpoint.url) == version


def test_a_killed_proxy_comes_back_by_itself(endpoint: Endpoint) -> None:
    version = endpoint.aliases()["champion"]
    container = proxy_container(endpoint)
    restarts, pid = int(container.attrs["RestartCount"]), int(container.attrs["State"]["Pid"])
    os.kill(pid, signal.SIGKILL)

    def back() -> bool:
        """A new HAProxy (another pid) runs and the endpoint answers through it."""
        return proxy_of(endpoint).pid() not in (None, pid) and answers(endpoint.url)

    wait_until(back, 5, 0.05)

    assert served_version(endpoint.url) == version
    shown = endpoint.cli("status", MODEL)
    assert shown.returncode == 0, shown.stderr
    found = re.search(r"proxy running \(pid \d+, (\d+) restarts?\)", shown.stdout)
    assert found, shown.stdout
    assert int(found[1]) >= max(restarts + 1, 1), shown.stdout
