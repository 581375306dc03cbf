"""The release flow end to end: real git repositories, a real Prefect server, MLflow on SQLite."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from shipyard import audit, registry
from shipyard.errors import GateError, ProjectError, SourceError
from shipyard.flows.release import release
from shipyard.settings import Settings
from tests.support.projects import EXAMPLES, commit_all, edit_manifest, git, make_repo

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]

MODEL = "digits-sklearn"


def versions(mlflow: MlflowClient, model: str = MODEL) -> list[str]:
    return sorted(str(v.version) for v in mlflow.search_model_versions(f"name = '{model}'"))


def task_states(flow_run_id: str) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs if run.state}


def flow_artifacts(flow_run_id: str) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    return {a.key: a.type for a in artifacts if a.key}


def report_of(flow_run_id: str, model: str = MODEL) -> str:
    """The markdown of the release report a flow run published."""
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{model}-release-report"])),
        )
    return str(artifact.data)


def test_release_from_git_registers_a_traceable_candidate(
    sklearn_repo: Path, settings: Settings
) -> None:
    head = git(sklearn_repo, "rev-parse", "HEAD")
    summary = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)

    assert summary.status == "registered" and summary.version == "1"
    assert summary.git_sha == head and not summary.reused
    mlflow = registry.client(settings)
    version = mlflow.get_model_version_by_alias(MODEL, "candidate")
    tags = version.tags
    assert str(version.version) == "1"
    assert tags["git_sha"] == head
    assert tags["fingerprint"] == summary.fingerprint
    assert tags["prefect_flow_run_id"] == summary.flow_run_id
    assert tags["variant"] == summary.variant == "int8"
    served = Path(
        mlflow.download_artifacts(
            version.run_id, "model/model.onnx", str(Path(settings.state_dir) / "dl")
        )
    )
    assert (
        hashlib.sha256(served.read_bytes()).hexdigest()
        == tags["onnx_sha256"]
        == summary.onnx_sha256
    )
    logged = {a.path for a in mlflow.list_artifacts(version.run_id, "onnx")}
    assert logged == {"onnx/fp32.onnx", "onnx/optimized.onnx", "onnx/int8.onnx"}
    report = {a.path for a in mlflow.list_artifacts(version.run_id, "report")}
    assert {"report/validation.json", "report/variants.png", "report/confusion.png"} <= report
    run = mlflow.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["hidden_layer_sizes"] == "[256, 128]"
    assert run.data.metrics["int8.accuracy"] == pytest.approx(summary.metrics["accuracy"])

    assert task_states(summary.flow_run_id) == {
        "source": "Completed",
        "data": "Completed",
        "train": "Completed",
        "export": "Completed",
        "optimize": "Completed",
        "validate": "Completed",
        "register": "Completed",
    }
    assert flow_artifacts(summary.flow_run_id) == {
        "digits-sklearn-variants": "table",
        "digits-sklearn-release-report": "markdown",
    }
    # Where the release spent its time: every stage that ran, in the summary and the report.
    assert summary.stages is not None and summary.seconds is not None
    ran = [s.stage for s in summary.stages]
    assert ran == ["source", "data", "train", "export", "optimize", "validate", "register"]
    assert not any(s.cached for s in summary.stages)
    assert sum(s.seconds for s in summary.stages) <= summary.seconds
    shown = report_of(summary.flow_run_id)
    assert "## Stages" in shown
    for s in summary.stages:
        assert f"| {s.stage} | Completed | {s.seconds:.2f} |  |" in shown


def test_a_second_release_of_unchanged_inputs_is_cached_and_reuses_the_version(
    sklearn_repo: Path, settings: Settings
) -> None:
    first = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    second = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)

    assert second.fingerprint == first.fingerprint
    assert second.version == first.version and second.reused
    assert second.mlflow_run_id == first.mlflow_run_id
    states = task_states(second.flow_run_id)
    assert states["data"] == states["train"] == states["export"] == states["optimize"] == "Cached"
    assert versions(registry.client(settings)) == ["1"]
    assert second.stages is not None
    cached = {s.stage for s in second.stages if s.cached}
    assert cached == {"data", "train", "export", "optimize"}
    assert "| data | Cached |" in report_of(second.flow_run_id)


def test_a_new_commit_that_changes_the_model_is_a_new_version(
    sklearn_repo: Path, settings: Settings
) -> None:
    first = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    edit_manifest(sklearn_repo, "hidden_layer_sizes: [256, 128]", "hidden_layer_sizes: [128]")
    sha = commit_all(sklearn_repo, "Smaller MLP")
    second = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)

    assert second.fingerprint != first.fingerprint
    assert second.version == "2" and second.git_sha == sha
    mlflow = registry.client(settings)
    assert mlflow.get_model_version_by_alias(MODEL, "candidate").version == 2
    assert versions(mlflow) == ["1", "2"]
    assert task_states(second.flow_run_id)["train"] == "Completed"


def test_two_clean_releases_of_a_commit_are_byte_identical(
    sklearn_repo: Path, make_settings
) -> None:
    states = [make_settings("clean-a"), make_settings("clean-b")]
    runs = [
        release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=s)
        for s in states
    ]
    assert runs[0].fingerprint == runs[1].fingerprint
    assert runs[0].onnx_sha256 == runs[1].onnx_sha256
    for variant in ("fp32.onnx", "optimized.onnx", "int8.onnx"):
        a, b = (
            s.builds_dir / str(r.fingerprint) / "onnx" / variant
            for s, r in zip(states, runs, strict=True)
        )
        assert a.read_bytes() == b.read_bytes()


def _no_candidate(settings: Settings) -> None:
    mlflow = registry.client(settings)
    assert registry.version_by_alias(mlflow, MODEL, "candidate") is None
    assert mlflow.search_model_versions(f"name = '{MODEL}'") == []


def _failed_run(settings: Settings) -> str:
    mlflow = registry.client(settings)
    experiment = mlflow.get_experiment_by_name(MODEL)
    (run,) = mlflow.search_runs([experiment.experiment_id])
    return str(run.info.status)


def test_a_failed_gate_names_gate_value_and_threshold_and_registers_nothing(
    sklearn_repo: Path, settings: Settings
) -> None:
    edit_manifest(sklearn_repo, "min_accuracy: 0.95", "min_accuracy: 0.999")
    commit_all(sklearn_repo, "Demand the impossible")
    with pytest.raises(GateError) as e:
        release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    message = str(e.value)
    assert (
        "Gate 'min_accuracy' failed for fp32: 0.9750 < minimum 0.9990 (manifest gates.min_accuracy)"
        in message
    )
    assert "for int8" in message and "for optimized" in message  # every failure, at once
    _no_candidate(settings)
    assert _failed_run(settings) == "FAILED"


def test_a_candidate_worse_than_the_champion_is_refused(
    sklearn_repo: Path, settings: Settings
) -> None:
    first = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    mlflow = registry.client(settings)
    mlflow.set_registered_model_alias(MODEL, "champion", first.version)
    edit_manifest(sklearn_repo, "hidden_layer_sizes: [256, 128]", "hidden_layer_sizes: [2]")
    edit_manifest(sklearn_repo, "min_accuracy: 0.95", "min_accuracy: 0.3")
    commit_all(sklearn_repo, "A much weaker model that still clears the absolute floor")
    with pytest.raises(
        GateError, match=r"Gate 'max_accuracy_drop' failed for fp32: .* champion v1 at 0\.98"
    ):
        release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    assert mlflow.get_model_version_by_alias(MODEL, "candidate").version == 1
    assert versions(mlflow) == ["1"]
    first_entry, failed = audit.read(settings, MODEL)
    assert first_entry["outcome"] == "registered" and first_entry["version"] == "1"
    assert failed["outcome"].startswith(
        "failed: 3 release gate(s) failed: - Gate 'max_accuracy_drop'"
    )
    assert failed["who"]["started_by"] == "a process running the flow directly (CLI)"
    assert failed["commit"] != first_entry["commit"]  # the weaker model's commit


def test_a_training_entrypoint_that_raises_fails_the_run(
    sklearn_repo: Path, settings: Settings
) -> None:
    (sklearn_repo / "train.py").write_text(
        "def train(x, y, *, seed, params):\n    raise ValueError('learning rate is negative')\n"
    )
    commit_all(sklearn_repo, "Break training")
    with pytest.raises(
        ProjectError, match="entrypoints.train .* raised ValueError: learning rate is negative"
    ):
        release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    _no_candidate(settings)
    assert _failed_run(settings) == "FAILED"


def test_a_ref_that_does_not_exist(sklearn_repo: Path, settings: Settings) -> None:
    with pytest.raises(SourceError, match="'v9' does not exist"):
        release(source=sklearn_repo.as_uri(), ref="v9", until="register", settings=settings)


def test_until_stops_after_the_named_stage(sklearn_repo: Path, settings: Settings) -> None:
    summary = release(source=sklearn_repo.as_uri(), ref="main", until="export", settings=settings)
    assert summary.status == "stopped after export"
    assert set(task_states(summary.flow_run_id)) == {"source", "data", "train", "export"}
    assert registry.client(settings).search_model_versions(f"name = '{MODEL}'") == []


def test_a_project_in_a_subdirectory_releases_with_the_fingerprint_of_its_tree(
    tmp_path: Path, sklearn_repo: Path, settings: Settings
) -> None:
    monorepo = tmp_path / "monorepo"
    shutil.copytree(
        EXAMPLES / MODEL,
        monorepo / "models" / "digits",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (monorepo / "README.md").write_text("Services and models; not part of the model project.\n")
    (monorepo / "service.py").write_text("print('an unrelated service')\n")
    git(monorepo, "init", "-q", "-b", "main")
    head = commit_all(monorepo, "Models live in models/")

    nested = release(
        source=monorepo.as_uri(),
        ref="main",
        subdir="models/digits",
        until="register",
        settings=settings,
    )
    assert nested.status == "registered" and nested.version == "1" and not nested.reused
    assert nested.git_sha == head
    tags = registry.client(settings).get_model_version(MODEL, "1").tags
    assert tags["git_sha"] == head and tags["source"] == monorepo.as_uri()

    # The project's tree is what is hashed, not where it sits or what surrounds it.
    at_root = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    assert at_root.fingerprint == nested.fingerprint
    assert at_root.version == "1" and at_root.reused
    assert at_root.onnx_sha256 == nested.onnx_sha256
    assert versions(registry.client(settings)) == ["1"]


def test_pytorch_cnn_release_with_static_int8(tmp_path: Path, settings: Settings) -> None:
    repo = make_repo(tmp_path, "digits-cnn")
    summary = release(source=repo.as_uri(), ref="main", until="register", settings=settings)
    assert summary.status == "registered" and summary.variant == "int8"
    assert summary.metrics["accuracy"] >= 0.95
    tags = registry.client(settings).get_model_version_by_alias("digits-cnn", "candidate").tags
    assert tags["onnx_sha256"] == summary.onnx_sha256
