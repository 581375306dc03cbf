"""The contracts defined once: how an image is pinned, how a version's tags are written to MLflow
and read back, and that a registered version carries every tag the README lists."""

from __future__ import annotations

import hashlib
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

from shipyard import registry
from shipyard.contracts import VersionTags, pinned
from shipyard.flows.release import release
from shipyard.manifest import load_manifest
from shipyard.project import load_dataset
from shipyard.settings import Settings
from tests.support.projects import git

DIGEST = "sha256:" + "d" * 64
README_TAGS = {
    "fingerprint",
    "git_sha",
    "git_dirty",
    "source",
    "ref",
    "commit_time",
    "onnx_sha256",
    "variant",
    "accuracy",
    "size_bytes",
    "data_sha256",
    "prefect_flow_run_id",
}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("shipyard/m:1", f"shipyard/m@{DIGEST}"),
        ("shipyard/m", f"shipyard/m@{DIGEST}"),
        ("127.0.0.1:5000/shipyard/m:tag", f"127.0.0.1:5000/shipyard/m@{DIGEST}"),
        ("127.0.0.1:5000/shipyard/m", f"127.0.0.1:5000/shipyard/m@{DIGEST}"),
        ("localhost:5000/m:v2-fp", f"localhost:5000/m@{DIGEST}"),
        (f"127.0.0.1:5000/shipyard/m@sha256:{'0' * 64}", f"127.0.0.1:5000/shipyard/m@{DIGEST}"),
        (f"127.0.0.1:5000/shipyard/m:tag@sha256:{'0' * 64}", f"127.0.0.1:5000/shipyard/m@{DIGEST}"),
    ],
)
def test_pinned_replaces_tag_and_digest_and_keeps_the_registry_port(
    reference: str, expected: str
) -> None:
    assert pinned(reference, DIGEST) == expected


@pytest.mark.unit
def test_version_tags_are_written_as_mlflow_strings() -> None:
    tags = VersionTags(
        fingerprint="f" * 64,
        git_sha="a" * 40,
        git_dirty=False,
        commit_time=1700000000,
        accuracy=0.97777777,
        size_bytes=56420,
        variant="int8",
    )
    assert tags.to_mlflow() == {
        "fingerprint": "f" * 64,
        "git_sha": "a" * 40,
        "git_dirty": "false",
        "commit_time": "1700000000",
        "accuracy": "0.977778",
        "size_bytes": "56420",
        "variant": "int8",
    }
    assert VersionTags(git_dirty=True).to_mlflow() == {"git_dirty": "true"}
    assert VersionTags().to_mlflow() == {}


@pytest.mark.unit
def test_version_tags_read_back_what_they_wrote() -> None:
    tags = VersionTags(
        fingerprint="f" * 64,
        git_sha="a" * 40,
        git_dirty=True,
        source="file:///srv/git/m.git",
        ref="main",
        commit_time=1700000000,
        onnx_sha256="e" * 64,
        variant="int8",
        accuracy=0.975,
        size_bytes=56420,
        data_sha256="b" * 64,
        prefect_flow_run_id="0b6c5d52-8d4e-4a43-9d1f-1d1b0f0e2a11",
        image="127.0.0.1:5000/shipyard/m:1",
        image_digest=DIGEST,
    )
    written = tags.to_mlflow()
    assert VersionTags.from_mlflow(written) == tags
    # Read from MLflow: other tools' tags are ignored, an empty tag is no tag.
    read = VersionTags.from_mlflow({**written, "mlflow.user": "ci", "ref": ""})
    assert read == tags.model_copy(update={"ref": None})
    assert read.pinned_image == f"127.0.0.1:5000/shipyard/m@{DIGEST}"


@pytest.mark.unit
def test_accuracy_is_rounded_to_six_places_on_the_way_to_mlflow() -> None:
    read = VersionTags.from_mlflow(VersionTags(accuracy=0.97777777).to_mlflow())
    assert read.accuracy == 0.977778


@pytest.mark.services
@pytest.mark.usefixtures("prefect_server")
def test_a_registered_version_carries_every_tag_the_readme_lists(
    sklearn_repo: Path, settings: Settings
) -> None:
    summary = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    assert summary.status == "registered", summary
    tags = registry.client(settings).get_model_version("digits-sklearn", str(summary.version)).tags

    assert set(tags) == README_TAGS
    onnx = settings.builds_dir / str(summary.fingerprint) / "onnx" / f"{summary.variant}.onnx"
    manifest = load_manifest(sklearn_repo)
    assert tags["fingerprint"] == summary.fingerprint
    assert tags["git_sha"] == summary.git_sha == git(sklearn_repo, "rev-parse", "HEAD")
    assert tags["git_dirty"] == "false"
    assert tags["source"] == summary.source == sklearn_repo.as_uri()
    assert tags["ref"] == summary.ref == "main"
    assert tags["commit_time"] == git(sklearn_repo, "log", "-1", "--format=%ct")
    assert (
        tags["onnx_sha256"] == summary.onnx_sha256 == hashlib.sha256(onnx.read_bytes()).hexdigest()
    )
    assert tags["variant"] == summary.variant == "int8"
    assert summary.metrics is not None
    assert tags["accuracy"] == f"{summary.metrics['accuracy']:.6f}"
    assert tags["size_bytes"] == str(onnx.stat().st_size) == str(int(summary.metrics["size_bytes"]))
    assert tags["data_sha256"] == load_dataset(sklearn_repo, manifest).sha256()
    assert tags["prefect_flow_run_id"] == summary.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(tags["prefect_flow_run_id"]))
    assert run.state is not None and run.state.is_completed()
    assert VersionTags.from_mlflow(tags).to_mlflow() == tags
