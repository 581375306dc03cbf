"""The registry password, given through settings, appears nowhere a release leaves a trace:
MLflow, the Prefect flow run, the CLI's output, the pushed image."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import Log

from shipyard import engine, registry
from shipyard.settings import Settings
from tests.support.endpoints import cli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]

MODEL = "digits-sklearn"


def forms(password: str, username: str) -> dict[str, bytes]:
    """The password as it could leak: plain, or base64 as in Basic auth and Docker's
    X-Registry-Auth."""
    plain = password.encode()
    basic = f"{username}:{password}".encode()
    return {
        "plain": plain,
        "base64": base64.b64encode(plain).rstrip(b"="),
        "urlsafe base64": base64.urlsafe_b64encode(plain).rstrip(b"="),
        "basic auth": base64.b64encode(basic).rstrip(b"="),
    }


def found(needles: dict[str, bytes], data: bytes | str) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [name for name, needle in needles.items() if needle in raw]


def prefect_records(flow_run_id: str) -> dict[str, str]:
    """The flow run, its task runs, logs and artifacts as Prefect's API returns them (JSON)."""
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run.id]))
        )
        logs: list[Log] = []
        while page := client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
            limit=200,
            offset=len(logs),
        ):
            logs += page
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    assert len(task_runs) >= 9 and len(logs) >= 9 and artifacts, "too little to search"
    return {
        "flow run": flow_run.model_dump_json(),
        **{f"task run {t.name}": t.model_dump_json() for t in task_runs},
        **{f"log {i}": log.model_dump_json() for i, log in enumerate(logs)},
        **{f"artifact {a.key}": a.model_dump_json() for a in artifacts},
    }


def mlflow_records(settings: Settings, run_id: str) -> dict[str, str]:
    """The run's params and tags, its experiment's tags, and every version's tags."""
    mlflow = registry.client(settings)
    run = mlflow.get_run(run_id)
    assert run.data.params and run.data.tags, "too little to search"
    versions = mlflow.search_model_versions(f"name = '{MODEL}'")
    return {
        "run params": json.dumps(run.data.params),
        "run tags": json.dumps(run.data.tags),
        "experiment tags": json.dumps(mlflow.get_experiment(run.info.experiment_id).tags),
        **{f"version {v.version} tags": json.dumps(v.tags) for v in versions},
    }


def layers(image: str, out: Path) -> dict[str, bytes]:
    """Every member of `docker save` of the image: each layer, the config, the manifest."""
    saved = out / "image.tar"
    with saved.open("wb") as file:
        for chunk in engine.engine().images.get(image).save(chunk_size=1 << 20):
            file.write(chunk)
    with tarfile.open(saved) as archive:
        return {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile()
        }


def test_the_registry_password_from_settings_reaches_no_record_output_or_layer(
    sklearn_repo: Path, image_settings: Settings, tmp_path: Path
) -> None:
    login = engine.registry_login(image_settings)  # the stack's password, given explicitly below
    needles = forms(login.password, login.username)

    done = cli(
        image_settings,
        "release", sklearn_repo.as_uri(), "--ref", "main", "--until", "push", "--json", "-v",
        SHIPYARD_REGISTRY_PASSWORD=login.password,
        SHIPYARD_LATENCY_RUNS="50",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO",  # -v shows Prefect's logs, as for a user
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["status"] == "pushed" and summary["image_digest"].startswith("sha256:")
    leaks = {}
    leaks["CLI output"] = found(needles, done.stdout + done.stderr)

    prefect = prefect_records(summary["flow_run_id"])
    parameters = json.loads(prefect["flow run"])["parameters"]
    assert parameters["settings"]["registry_password"] == "**********"  # passed, and masked
    leaks |= {name: found(needles, text) for name, text in prefect.items()}

    leaks |= {
        name: found(needles, text)
        for name, text in mlflow_records(image_settings, summary["mlflow_run_id"]).items()
    }
    artifacts = [p for p in image_settings.artifact_root.rglob("*") if p.is_file()]
    assert any(p.match("image/golden.json") for p in artifacts)
    leaks |= {f"artifact {p}": found(needles, p.read_bytes()) for p in artifacts}
    leaks["MLflow store"] = found(needles, (image_settings.state_dir / "mlflow.db").read_bytes())

    image = engine.engine().images.get(summary["image"])
    repository = summary["image"].rpartition(":")[0]
    assert f"{repository}@{summary['image_digest']}" in image.attrs["RepoDigests"]  # as pushed
    members = layers(summary["image"], tmp_path)
    assert sum(name.endswith("layer.tar") for name in members) >= 3
    leaks |= {f"image {name}": found(needles, data) for name, data in members.items()}

    assert {where: forms for where, forms in leaks.items() if forms} == {}
    print(f"searched {len(leaks)} places for the password: {len(members)} image members")
