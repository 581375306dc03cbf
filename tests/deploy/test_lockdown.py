"""Locked-down serving: what a serving container may do, and what the rollout deploys.

A second model (versions registered from the shared endpoint's releases: the same pushed
images, no training) is served with an API key and chosen limits on its own port, once for the
module; the shared endpoint is never touched.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from docker.models.containers import Container
from pydantic import SecretStr

from shipyard import engine, registry
from shipyard.deploy import containers, state
from shipyard.deploy.endpoint import keys_dir, recover, undeploy
from shipyard.errors import DeployError
from shipyard.flows.promote import promote
from shipyard.flows.rollback import rollback
from shipyard.flows.rollout import rollout, target_of_version
from shipyard.manifest import Resources
from shipyard.settings import Settings
from tests.support.endpoints import MODEL, Endpoint, aliases, deploy_copy, register_copy

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]

KEY = "lockdown-test-key-0123456789"
NAME = f"{MODEL}-locked"
LIMITS = Resources(memory_mb=384, cpus=1.5, pids=200)
ROW = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


@dataclass
class Locked:
    settings: Settings
    url: str
    version: str

    def container(self) -> Container:
        deployed = state.load(self.settings.deploy_dir, NAME)
        assert deployed is not None and deployed.live is not None
        instance = deployed.instances[deployed.live]
        return engine.engine(self.settings).containers.get(instance.container_id)

    def infer(self, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v2/models/{MODEL}/infer", json=ROW, headers=headers, timeout=5
        )


@pytest.fixture(scope="module")
def locked(_deployed: Endpoint) -> Iterator[Locked]:
    """`NAME` serving its first version with an API key, limited to `LIMITS`."""
    settings = _deployed.settings.model_copy(update={"serve_api_key": SecretStr(KEY)})
    version = register_copy(settings, MODEL, NAME, "champion")
    try:
        url = deploy_copy(settings, NAME, version, containers.free_port("127.0.0.1"), LIMITS)
        yield Locked(settings, url, version)
    finally:
        undeploy(settings, NAME)
        assert not keys_dir(settings, NAME).exists()  # undeploy leaves no key behind


def assert_locked_down(container: Container) -> None:
    host = container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == LIMITS.memory_mb * 2**20
    assert host["NanoCpus"] == int(LIMITS.cpus * 1e9)
    assert host["PidsLimit"] == LIMITS.pids
    assert set(host["Tmpfs"]) == {"/tmp"} and "size=64m" in host["Tmpfs"]["/tmp"]
    environment = container.attrs["Config"]["Env"]
    assert f"SHIPYARD_SERVE_API_KEYS_FILE={containers.KEYS_FILE}" in environment
    assert not any(KEY in variable for variable in environment)
    assert not any(v.startswith("SHIPYARD_SERVE_API_KEYS=") for v in environment)
    [mount] = [m for m in container.attrs["Mounts"] if m["Destination"] == containers.KEYS_FILE]
    assert mount["RW"] is False


def test_a_serving_container_is_read_only_unprivileged_limited_and_keyless(
    locked: Locked,
) -> None:
    container = locked.container()
    assert_locked_down(container)

    # On the host: the key file is the image user's alone (we run as root here).
    [mount] = [m for m in container.attrs["Mounts"] if m["Destination"] == containers.KEYS_FILE]
    info = Path(mount["Source"]).stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o400, containers.IMAGE_USER)
    assert stat.S_IMODE(Path(mount["Source"]).parent.stat().st_mode) == 0o700

    # Inside: the root filesystem refuses writes; /tmp (the metrics files) takes them.
    for path in ("/probe", "/model/probe", "/opt/venv/probe"):
        code, out = container.exec_run(["/opt/venv/bin/python", "-c", f"open('{path}', 'w')"])
        assert code != 0 and b"Read-only file system" in out, (path, out)
    code, out = container.exec_run(["/opt/venv/bin/python", "-c", "open('/tmp/probe', 'w')"])
    assert code == 0, out
    code, out = container.exec_run(
        ["/opt/venv/bin/python", "-c", "import os; print(os.listdir('/tmp'))"]
    )
    assert b"shipyard-metrics-" in out, out  # the workers' Prometheus multiprocess directory
    # No process in the container has the key in its environment.
    code, out = container.exec_run(
        ["/bin/sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'"]
    )
    assert code == 0 and b"SHIPYARD_SERVE_API_KEYS_FILE" in out and KEY.encode() not in out

    # The endpoint requires the key that the mounted file holds.
    assert locked.infer().status_code == 401
    assert locked.infer({"Authorization": "Bearer not-the-key"}).status_code == 401
    answer = locked.infer({"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text


def test_recovery_runs_a_removed_slot_again_with_the_same_limits(locked: Locked) -> None:
    before = locked.container()
    before.remove(force=True)

    done = recover(locked.settings, NAME)

    assert "run again" in done, done
    after = locked.container()
    assert after.id != before.id
    assert_locked_down(after)
    assert locked.infer({"X-API-Key": KEY}).status_code == 200
    assert locked.infer().status_code == 401


def refused_and_nothing_changed(locked: Locked, run: object, *expected: str) -> None:
    """`run()` raises a `DeployError` naming every `expected` part; the aliases, the state and
    the serving container are as they were."""
    aliases_before = aliases(locked.settings, NAME)
    container_before = locked.container().id
    state_before = state.path(locked.settings.deploy_dir, NAME).read_text()
    with pytest.raises(DeployError) as refused:
        run()  # type: ignore[operator]
    message = str(refused.value)
    for part in expected:
        assert part in message, (part, message)
    assert "Re-release" in message and "nightly-rebuild" in message
    assert aliases(locked.settings, NAME) == aliases_before
    assert locked.container().id == container_before
    assert locked.container().status == "running"
    assert state.path(locked.settings.deploy_dir, NAME).read_text() == state_before


def test_promoting_a_version_whose_image_does_not_hold_its_onnx_file_is_refused(
    locked: Locked,
) -> None:
    forged = "0" * 64
    version = register_copy(locked.settings, MODEL, NAME, "champion", {"onnx_sha256": forged})
    tags = registry.tags_of(registry.client(locked.settings).get_model_version(NAME, version))
    image = tags.pinned_image
    assert image is not None
    label = engine.engine(locked.settings).images.get(image).labels["ai.shipyard.onnx.sha256"]

    refused_and_nothing_changed(
        locked,
        lambda: promote(NAME, version, settings=locked.settings),
        f"v{version}",
        image,
        f"ai.shipyard.onnx.sha256={label}",
        f"onnx_sha256 is {forged}",
    )


def test_rolling_back_to_an_image_from_another_registry_is_refused(locked: Locked) -> None:
    mlflow = registry.client(locked.settings)
    original = mlflow.get_model_version(NAME, locked.version)
    elsewhere = "registry.example:5000/shipyard/digits-sklearn:v1"
    version = register_copy(locked.settings, MODEL, NAME, "champion", {"image": elsewhere})
    mlflow.set_registered_model_alias(NAME, registry.PREVIOUS, version)
    try:
        refused_and_nothing_changed(
            locked,
            lambda: rollback(NAME, settings=locked.settings),
            f"v{version}",
            f"registry.example:5000/shipyard/digits-sklearn@{original.tags['image_digest']}",
            f"'registry.example:5000', not the configured {locked.settings.registry!r}",
            f"onnx_sha256 is {original.tags['onnx_sha256']}",
        )
    finally:
        mlflow.delete_registered_model_alias(NAME, registry.PREVIOUS)


def test_rolling_out_what_already_serves_replaces_nothing(locked: Locked) -> None:
    """A re-release of unchanged inputs ends here: same version, image and policy, champion."""
    serving_before = locked.container().id
    recorded = state.load(locked.settings.deploy_dir, NAME)
    assert recorded is not None
    found = registry.client(locked.settings).get_model_version(NAME, locked.version)
    target = target_of_version(locked.settings, NAME, found)

    result = rollout(target, "blue-green", recorded.policy, locked.settings)
    assert result.strategy == "unchanged" and result.deployed_version == locked.version
    assert locked.container().id == serving_before
    assert locked.infer({"Authorization": f"Bearer {KEY}"}).status_code == 200
