"""The sandbox: a model project's own code runs in a container that reaches nothing it should not.

Real releases on the real engine: a project whose training code tries to reach the network, the
registry's password, the Docker socket and the worker's environment, and one whose data code
plants a symlink for the worker to read back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from shipyard import registry
from shipyard.errors import ProjectError
from shipyard.flows.release import release
from shipyard.sandbox import container
from shipyard.settings import AllowedSource, Settings
from tests.support.projects import EXAMPLES, lock_of

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server", "docker_stack")]

ATTACKER_TRAIN = """
import os
import socket


def _try(name, action):
    try:
        action()
        return f"{name}: REACHED"
    except Exception as e:
        return f"{name}: denied ({type(e).__name__}: {e})"


def train(x, y, *, seed, params):
    results = [
        _try("internet", lambda: socket.create_connection(("1.1.1.1", 80), timeout=3)),
        _try("registry", lambda: socket.create_connection((params["registry_host"], 5000), timeout=3)),
        _try("password", lambda: open(params["password_file"]).read()),
        _try("docker", lambda: socket.socket(socket.AF_UNIX).connect("/var/run/docker.sock")),
        _try("source", lambda: open("/project/planted.py", "w").write("x = 1")),
        _try("root", lambda: os.setuid(0)),
    ]
    leaked = sorted(k for k in os.environ if k.startswith(("SHIPYARD", "PREFECT", "MLFLOW", "DOCKER")))
    results.append(f"environment: {leaked or 'nothing of the worker'}")
    raise RuntimeError(" | ".join(results))
"""


def _project(tmp_path: Path, **files: str) -> Path:
    project = tmp_path / "p"
    project.mkdir()
    for name in ("shipyard.yaml", "data.py", "train.py"):
        (project / name).write_text((EXAMPLES / "digits-sklearn" / name).read_text())
    for stem, text in files.items():
        (project / f"{stem}.py").write_text(text)
    return project


def _set(project: Path, **fields: object) -> None:
    path = project / "shipyard.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **fields}))


def _no_versions(settings: Settings) -> None:
    assert registry.client(settings).search_registered_models() == []


def _no_sandbox_left(settings: Settings) -> None:
    from shipyard.engine import engine

    ours = f"{container.LABEL}.state={settings.state_dir.resolve()}"
    left = engine().containers.list(all=True, filters={"label": ours})
    assert left == [], [c.name for c in left]


def test_training_code_reaches_no_network_secret_socket_or_source(
    tmp_path: Path, settings: Settings
) -> None:
    project = _project(tmp_path, train=ATTACKER_TRAIN)
    _set(
        project,
        params={
            "registry_host": "172.17.0.1",
            "password_file": str(settings.registry_password_file),
        },
    )
    with pytest.raises(ProjectError) as failed:
        release(source=str(project), until="register", settings=settings)

    message = str(failed.value)
    assert "entrypoints.train" in message
    for attempt in ("internet", "registry", "password", "docker", "source", "root"):
        assert f"{attempt}: denied" in message, message
    assert "REACHED" not in message
    assert "environment: nothing of the worker" in message
    assert not (project / "planted.py").exists()
    password = settings.registry_password_file.read_text().strip()
    assert password not in message
    _no_versions(settings)
    _no_sandbox_left(settings)


PLANTING_DATA = """
import atexit
import os

from data_original import load as _load


def _plant():
    os.remove("/out/data.npz")
    os.symlink({target!r}, "/out/data.npz")


def load():
    atexit.register(_plant)
    return _load()
"""


def test_a_symlink_planted_in_the_output_is_not_read_back(
    tmp_path: Path, settings: Settings
) -> None:
    target = str(settings.registry_password_file)
    project = _project(
        tmp_path,
        data=PLANTING_DATA.format(target=target),
        data_original=(EXAMPLES / "digits-sklearn" / "data.py").read_text(),
    )
    with pytest.raises(ProjectError, match="did not write data.npz as a regular file"):
        release(source=str(project), until="register", settings=settings)
    _no_versions(settings)
    _no_sandbox_left(settings)


def test_a_network_request_its_allowed_source_does_not_grant_fails_before_any_code_runs(
    tmp_path: Path, settings: Settings
) -> None:
    project = _project(tmp_path, data="raise SystemExit('project code ran')\n")
    _set(project, sandbox={"network": True})
    listed = settings.model_copy(
        update={
            "allowed_file_root": tmp_path,
            "allowed_sources": [
                AllowedSource(
                    repository="acme/digits", url=project.as_uri(), models=["digits-sklearn"]
                )
            ],
        }
    )
    with pytest.raises(ProjectError, match="sandbox.network is true .* does not grant"):
        release(source=str(project), until="register", settings=listed)
    _no_versions(settings)


def test_a_project_with_its_own_lock_trains_with_those_packages_and_only_them(
    tmp_path: Path, settings: Settings
) -> None:
    train = (EXAMPLES / "digits-sklearn" / "train.py").read_text()
    project = _project(tmp_path, train="import tabulate  # from the project's lock\n" + train)
    with pytest.raises(ProjectError, match="No module named 'tabulate'"):
        release(source=str(project), until="train", settings=settings)

    (project / "requirements.lock").write_text(lock_of("tabulate", tmp_path))
    summary = release(source=str(project), until="train", settings=settings)
    assert summary.status == "stopped after train"
    _no_sandbox_left(settings)


def _sandboxes_started(settings: Settings, since: float) -> list[str]:
    """The stages whose sandbox containers the engine started for `settings` since `since`."""
    from shipyard.engine import engine

    ours = f"{container.LABEL}.state={settings.state_dir.resolve()}"
    events = engine().api.events(
        since=since,
        until=time.time(),
        filters={"type": "container", "event": "start", "label": ours},
        decode=True,
    )
    return [event["Actor"]["Attributes"][container.LABEL] for event in events]


def _fp32(settings: Settings, fingerprint: str | None) -> str:
    assert fingerprint
    graph = settings.builds_dir / fingerprint / "onnx" / "fp32.onnx"
    return hashlib.sha256(graph.read_bytes()).hexdigest()


def test_a_new_commit_trains_and_exports_in_its_data_stages_sandbox_and_gets_the_same_graph(
    tmp_path: Path, make_settings: Callable[[str], Settings]
) -> None:
    project = _project(tmp_path)

    # Data cached by itself first: train and export then each start their own sandbox.
    apart = make_settings("apart")
    release(source=str(project), until="data", settings=apart)
    since = time.time()
    each = release(source=str(project), until="export", settings=apart)
    assert sorted(_sandboxes_started(apart, since)) == ["export", "train"]

    # New inputs: the data stage's sandbox runs the two after it, in the same interpreter.
    together = make_settings("together")
    since = time.time()
    one = release(source=str(project), until="export", settings=together)
    assert _sandboxes_started(together, since) == ["data"]
    assert [s.stage for s in one.stages] == ["source", "data", "train", "export"]

    assert one.fingerprint == each.fingerprint
    timing = {"train_seconds"}
    assert one.metrics and each.metrics
    assert {k: v for k, v in one.metrics.items() if k not in timing} == {
        k: v for k, v in each.metrics.items() if k not in timing
    }
    assert _fp32(together, one.fingerprint) == _fp32(apart, each.fingerprint)
    _no_sandbox_left(together)
