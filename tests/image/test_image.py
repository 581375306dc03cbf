"""Release images on the real engine and registry: build, smoke test, push, reproducibility."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import docker
import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from shipyard import engine, registry
from shipyard.errors import ImageError, StackError
from shipyard.flows.release import release
from shipyard.image.build import smoke_test
from shipyard.image.context import ImageSpec, dockerfile
from shipyard.image.push import push_release
from shipyard.image.release import ReleaseImage
from shipyard.settings import Settings
from tests.image.conftest import BURST_GAP_S, PUSHED, RegistryProxy, bursts
from tests.support.projects import git

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]

MODEL = "digits-sklearn"


def manifest_digest(reference: str, settings: Settings) -> str:
    """The digest the stack's registry holds for `reference`'s tag (whatever address the
    reference names)."""
    repository, _, tag = reference.split("/", 1)[1].rpartition(":")
    credentials = engine.registry_login(settings)
    answer = httpx.head(
        f"http://{credentials.address}/v2/{repository}/manifests/{tag}",
        auth=(credentials.username, credentials.password),
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert answer.status_code == 200, answer
    return answer.headers["Docker-Content-Digest"]


def manifest_exists(reference: str, digest: str, settings: Settings) -> bool:
    repository = reference.split("/", 1)[1].rpartition(":")[0]
    credentials = engine.registry_login(settings)
    answer = httpx.get(
        f"http://{credentials.address}/v2/{repository}/manifests/{digest}",
        auth=(credentials.username, credentials.password),
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    return answer.status_code == 200


def file_in_image(client: docker.DockerClient, image: str, path: str) -> bytes:
    """A file's bytes from an image, read through a created (never started) container."""
    container = client.containers.create(image)
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.extractfile(Path(path).name)
            assert member is not None
            return member.read()
    finally:
        container.remove(force=True)


def forget_local_images(client: docker.DockerClient, repository: str) -> None:
    """A clean engine for this model: its images and the classic builder's cache gone, but for
    those a running container uses (a model deployed by `make demo` on the same engine)."""
    in_use = {c.image.id for c in client.containers.list() if c.image is not None}
    for image in client.images.list(name=repository):
        if image.id not in in_use:
            client.images.remove(image.id, force=True)
    client.images.prune(filters={"dangling": True})


def test_release_builds_smoke_tests_and_pushes_a_labelled_image(
    sklearn_repo: Path, image_settings: Settings
) -> None:
    summary = release(
        source=sklearn_repo.as_uri(), ref="main", until="push", settings=image_settings
    )
    head = git(sklearn_repo, "rev-parse", "HEAD")
    assert summary.status == "pushed"
    assert summary.image.startswith(f"{image_settings.registry}/shipyard/{MODEL}:")
    assert summary.image_digest.startswith("sha256:")
    assert manifest_exists(summary.image, summary.image_digest, image_settings)

    tags = registry.client(image_settings).get_model_version_by_alias(MODEL, "candidate").tags
    assert tags["image"] == summary.image and tags["image_digest"] == summary.image_digest

    client = engine.engine(image_settings)
    config = client.images.get(summary.image).attrs["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.revision"] == head
    assert labels["org.opencontainers.image.version"] == summary.fingerprint
    assert labels["ai.shipyard.onnx.sha256"] == summary.onnx_sha256
    created = int(git(sklearn_repo, "log", "-1", "--format=%ct"))
    assert labels["org.opencontainers.image.created"] == (
        datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    assert config["User"] == "10001:10001"
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])

    run = registry.client(image_settings).get_run(summary.mlflow_run_id)
    sbom_path = registry.client(image_settings).download_artifacts(
        run.info.run_id, "image/sbom.cdx.json", str(image_settings.state_dir)
    )
    components = json.loads(Path(sbom_path).read_text())["components"]
    versions = {c["name"]: c["version"] for c in components}
    assert versions["onnxruntime"] and versions["numpy"]
    # The base's Debian packages too, with package URLs: what explains a changed digest.
    python3 = next(c for c in components if c["purl"].startswith("pkg:deb/debian/python3@"))
    assert python3["version"].startswith("3.11") and "arch=amd64" in python3["purl"]
    shipped = file_in_image(client, summary.image, "/model/shipyard.json")
    assert json.loads(shipped)["version"] == summary.version  # what /v2/models/{name} reports


def test_re_releasing_unchanged_inputs_builds_and_pushes_nothing(
    sklearn_repo: Path, image_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    first = release(source=sklearn_repo.as_uri(), ref="main", until="push", settings=image_settings)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shipyard.progress"):
        again = release(
            source=sklearn_repo.as_uri(), ref="main", until="push", settings=image_settings
        )
    stages = {getattr(r, "stage", None) for r in caplog.records if r.name == "shipyard.progress"}
    assert "register" in stages and not stages & {"build_image", "push_image"}, stages
    assert again.status == "pushed" and again.reused
    assert (again.image, again.image_digest) == (first.image, first.image_digest)


def test_the_pushed_image_pulls_and_serves_anywhere(
    sklearn_repo: Path, image_settings: Settings
) -> None:
    summary = release(
        source=sklearn_repo.as_uri(), ref="main", until="push", settings=image_settings
    )
    client = engine.engine(image_settings)
    pinned = f"{summary.image.rpartition(':')[0]}@{summary.image_digest}"
    forget_local_images(client, summary.image.rpartition(":")[0])
    credentials = engine.registry_login(image_settings)
    client.images.pull(pinned, auth_config=credentials.auth())
    data = json.loads((Path(__file__).parents[2] / "benchmarks" / "digits_rows.json").read_text())
    x = np.asarray(data, dtype=np.float32)
    from shipyard.inference import predict, session

    build = image_settings.builds_dir / summary.fingerprint / "onnx" / f"{summary.variant}.onnx"
    labels, probabilities = predict(session(build), x)
    smoke_test(client, pinned, x, labels, probabilities)  # raises if anything differs


def test_same_commit_from_clean_state_gives_the_same_digest(
    sklearn_repo: Path, make_settings, docker_stack: dict[str, str]
) -> None:
    client = engine.engine(Settings())
    digests = []
    for name in ("clean-a", "clean-b"):
        summary = release(
            source=sklearn_repo.as_uri(), ref="main", until="push", settings=make_settings(name)
        )
        digests.append(summary.image_digest)
        forget_local_images(client, summary.image.rpartition(":")[0])
    assert digests[0] == digests[1]


def test_refused_credentials_fail_the_push_at_once_naming_the_user_and_tag_nothing(
    sklearn_repo: Path, image_settings: Settings, registry_proxy: Callable[[int], RegistryProxy]
) -> None:
    proxy = registry_proxy(0)
    wrong = image_settings.model_copy(
        update={
            "registry": proxy.address,
            "registry_username": "intruder",
            "registry_password": SecretStr("not-the-password"),
            "push_attempts": 4,
        }
    )
    with pytest.raises(ImageError) as refused:
        release(source=sklearn_repo.as_uri(), ref="main", until="push", settings=wrong)
    # One attempt: no retry, so no backoff (a second attempt would come ≥ 1 s later).
    times = [at for at, dropped in proxy.connections if not dropped]
    assert len(times) == len(proxy.connections) > 0
    assert bursts(times) == [0.0] and times[-1] - times[0] < BURST_GAP_S, times
    assert str(refused.value) == (
        f"Registry {proxy.address} refused the credentials of user 'intruder': check "
        "SHIPYARD_REGISTRY_USERNAME / SHIPYARD_REGISTRY_PASSWORD (or the Secret block)."
    )
    tags = registry.client(image_settings).get_model_version_by_alias(MODEL, "candidate").tags
    assert "image" not in tags and "image_digest" not in tags


def test_a_transient_registry_failure_is_retried_and_the_push_then_succeeds(
    image_settings: Settings,
    registry_proxy: Callable[[int], RegistryProxy],
    base_as_release: Callable[[str], tuple[ReleaseImage, str, str]],
) -> None:
    # The engine opens two connections per failed attempt (TLS first, then plain HTTP for an
    # insecure registry): four dropped are two failed attempts; the third gets through.
    proxy = registry_proxy(4)
    image, version, run_id = base_as_release(proxy.address)
    settings = image_settings.model_copy(update={"registry": proxy.address, "push_attempts": 3})

    pushed = push_release(image, PUSHED, version, run_id, settings)

    assert proxy.attempts() == pytest.approx([0.0, 1.0, 3.0], abs=0.3)  # backoff 1 s, then 2 s
    assert pushed.digest == manifest_digest(image.reference, image_settings)
    tags = registry.client(settings).get_model_version(PUSHED, version).tags
    assert (tags["image"], tags["image_digest"]) == (image.reference, pushed.digest)


def test_a_registry_failing_more_often_than_push_attempts_fails_the_push_and_tags_nothing(
    image_settings: Settings,
    registry_proxy: Callable[[int], RegistryProxy],
    base_as_release: Callable[[str], tuple[ReleaseImage, str, str]],
) -> None:
    proxy = registry_proxy(4)
    image, version, run_id = base_as_release(proxy.address)
    settings = image_settings.model_copy(update={"registry": proxy.address, "push_attempts": 2})

    with pytest.raises(
        ImageError, match=rf"^Push of {image.reference} failed after 2 attempts: push of"
    ):
        push_release(image, PUSHED, version, run_id, settings)

    assert proxy.attempts() == pytest.approx([0.0, 1.0], abs=0.3)
    assert [dropped for _, dropped in proxy.connections] == [True] * 4
    tags = registry.client(settings).get_model_version(PUSHED, version).tags
    assert "image" not in tags and "image_digest" not in tags


def test_a_failing_smoke_test_names_the_difference_and_leaves_no_container(
    sklearn_repo: Path, image_settings: Settings
) -> None:
    summary = release(
        source=sklearn_repo.as_uri(), ref="main", until="build", settings=image_settings
    )
    client = engine.engine(image_settings)
    x = np.zeros((4, 64), dtype=np.float32)
    with pytest.raises(ImageError, match=r"differ from the validated model: \d+ of 4 labels"):
        smoke_test(client, summary.image, x, np.array([11, 11, 11, 11]), np.zeros((4, 10)))
    left = client.containers.list(all=True, filters={"label": "ai.shipyard.role=smoke-test"})
    assert left == []


def test_a_broken_image_never_becomes_ready_and_is_removed(
    image_settings: Settings, tmp_path: Path
) -> None:
    client = engine.engine(image_settings)
    base = engine.base_image(image_settings)
    (tmp_path / "Dockerfile").write_text(
        f'FROM {base}\nENTRYPOINT ["python3", "-c", "raise SystemExit(3)"]\n'
    )
    broken, _ = client.images.build(path=str(tmp_path), tag="shipyard-test/broken:1", rm=True)
    with pytest.raises(ImageError, match=r"did not become ready .* \(status exited\)"):
        smoke_test(
            client,
            "shipyard-test/broken:1",
            np.zeros((1, 64), np.float32),
            np.zeros(1),
            np.zeros((1, 10)),
        )
    assert client.containers.list(all=True, filters={"label": "ai.shipyard.role=smoke-test"}) == []
    client.images.remove(broken.id, force=True)


def test_unreachable_engine_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(
        StackError,
        match=r"No Docker engine answers at unix:///nonexistent/docker.sock .*shipyard stack up",
    ):
        engine.engine()


def test_a_missing_base_image_says_how_to_get_one(
    sklearn_repo: Path, image_settings: Settings, tmp_path: Path
) -> None:
    missing = image_settings.model_copy(
        update={
            "stack_dir": tmp_path / "empty-stack",
            "registry_password": SecretStr(engine.registry_login(image_settings).password),
            "base_image": f"{image_settings.registry}/shipyard/no-such-base@sha256:{'0' * 64}",
        }
    )
    with pytest.raises(
        ImageError,
        match="Base image .*no-such-base.* is missing and cannot be pulled .*shipyard stack up",
    ):
        release(source=sklearn_repo.as_uri(), ref="main", until="push", settings=missing)


def test_runtime_dockerfile_is_multi_stage_hermetic_non_root_and_labels_come_from_the_spec() -> (
    None
):
    text = dockerfile("base@sha256:1", 1_700_000_000)
    assert text.count("FROM base@sha256:1") == 2
    assert "--no-index --no-deps --require-hashes" in text
    assert "USER 10001:10001" in text and "HEALTHCHECK" in text
    assert "SOURCE_DATE_EPOCH=1700000000" in text
    assert "--invalidation-mode unchecked-hash" in text  # bytecode that does not embed times
    labels = ImageSpec(
        model="m",
        fingerprint="f" * 64,
        onnx_sha256="a" * 64,
        base="base@sha256:1",
        revision="r" * 40,
        source="file:///repo",
        epoch=1_700_000_000,
    ).labels
    assert labels["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert labels["ai.shipyard.onnx.sha256"] == "a" * 64


def test_registry_password_from_a_prefect_secret_block(tmp_path: Path) -> None:
    from prefect.blocks.system import Secret

    Secret(value="from-the-block").save("shipyard-test-registry", overwrite=True)
    settings = Settings(
        state_dir=tmp_path,
        stack_dir=tmp_path / "no-stack",
        registry_password_block="shipyard-test-registry",
    )
    credentials = engine.registry_login(settings)
    assert credentials.password == "from-the-block" and credentials.username == "shipyard"
