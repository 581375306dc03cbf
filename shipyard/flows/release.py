"""The `release` flow: source → data → train → export → optimize → validate → register →
build → push → deploy (→ crown → retire).

Each stage is one Prefect task, visible in the UI; the expensive ones are cached by the
release fingerprint, and `data` by the fingerprint of its own inputs. The release report lists
every stage that ran with its state and duration. Deploying is `flows/rollout.py`, shared with
`promote` and `rollback`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run
from prefect.utilities.urls import url_for

from shipyard import audit, registry, report, warmup
from shipyard import register as registration
from shipyard.contracts import ReleaseSummary, StageTiming
from shipyard.errors import ShipyardError
from shipyard.fingerprint import data_inputs, package_versions
from shipyard.fingerprint import fingerprint as compute_fingerprint
from shipyard.flows.rollout import (
    LOCK_WAIT_S,
    build_lock,
    rollout,
    target_of_release,
    target_of_version,
)
from shipyard.flows.stages import run_settings, run_stage, timed
from shipyard.frameworks import PACKAGES
from shipyard.manifest import Manifest, Strategy
from shipyard.project import Dataset
from shipyard.sandbox import stages as sandbox_stages
from shipyard.settings import Settings
from shipyard.source import Checkout, redact, refuse_credentials
from shipyard.tasks.build_image import build_image
from shipyard.tasks.caching import cached
from shipyard.tasks.data import load_data
from shipyard.tasks.export import export
from shipyard.tasks.optimize import optimize
from shipyard.tasks.push_image import push_image
from shipyard.tasks.register import register
from shipyard.tasks.source import checkout, still_tip
from shipyard.tasks.train import train
from shipyard.tasks.validate import validate

if TYPE_CHECKING:
    from shipyard.deploy.endpoint import Target
    from shipyard.register import RegisteredVersion

# What a stage needs (MLflow, ONNX, the engine's client, matplotlib) is imported when it runs,
# not with this module: a worker's run imports it before its first stage starts.

Stage = Literal[
    "source",
    "data",
    "train",
    "export",
    "optimize",
    "validate",
    "register",
    "build",
    "push",
    "deploy",
]
STAGES: tuple[Stage, ...] = get_args(Stage)


@dataclass(frozen=True)
class Inputs:
    """What every stage after `data` works from: one release's fixed inputs."""

    tree: Checkout
    manifest: Manifest
    data: Dataset
    data_hash: str
    fingerprint: str
    experiment: str
    run_id: str
    settings: Settings
    ahead: Path | None
    """Where the data stage's sandbox trained and exported, if it ran (`sandbox.stages.data`)."""


@dataclass(frozen=True)
class Report:
    """What the release report shows besides the summary: the variants, gates and pictures."""

    rows: list[dict[str, Any]]
    gates: list[str]
    pictures: list[Path]


def _urls(
    settings: Settings, experiment: str, run_id: str, model: str, version: str | None
) -> dict[str, str]:
    base = settings.mlflow_ui_url or (
        settings.tracking_uri if settings.tracking_uri.startswith("http") else None
    )
    urls = {}
    if base:
        base = base.rstrip("/")
        urls["mlflow_run_url"] = f"{base}/#/experiments/{experiment}/runs/{run_id}"
        if version:
            urls["mlflow_version_url"] = f"{base}/#/models/{model}/versions/{version}"
    # Not `prefect.runtime.flow_run.ui_url`: it builds a route the UI no longer serves.
    if flow_url := url_for("flow-run", obj_id=flow_run.get_id()):
        urls["flow_run_url"] = flow_url
    return urls


def _run_name() -> str:
    return f"release-{redact(str(flow_run.parameters['source']))}"


@flow(name="release", flow_run_name=_run_name, validate_parameters=True)
def release(
    source: str,
    ref: str | None = None,
    subdir: str | None = None,
    until: Stage = "deploy",
    strategy: Strategy | None = None,
    delivery: str | None = None,
    pusher: str | None = None,
    branch: str | None = None,
    settings: Settings | None = None,
) -> ReleaseSummary:
    """Release the model project at SOURCE (a directory, or a git URL at `ref`).

    `delivery` and `pusher` name the webhook push that triggered the run, for the audit trail.
    SOURCE must carry no credentials (refused, unechoed: they would be stored with the run's
    parameters); the `source` stage enforces `allowed_sources` (`shipyard/trust.py`).

    With `branch` (a push's), the commit `ref` names must be on that branch, and must still be
    its tip once the model's build lock is held (and right after the checkout): otherwise the
    release is skipped, status `skipped: <commit> is no longer the tip of <branch> (now
    <tip>)`, and nothing is registered. An older delivery arriving late never overwrites a
    newer release, and a branch force-pushed back to an earlier commit releases that commit.

    Returns the release summary; raises on the first failed stage, after marking the
    MLflow run failed. Nothing is registered unless every gate passed; `champion` moves only
    when the deploy (by `strategy`, default the manifest's `deploy.strategy`) passed every step.
    """
    refuse_credentials(source)
    settings = run_settings(settings)
    _expect_later_stages(settings)
    start = time.perf_counter()
    with timed() as timings:
        tree, manifest = run_stage(checkout, source, ref, subdir, settings, branch)
        with audit.audited(
            settings,
            "release",
            manifest.name,
            audit.who(delivery, pusher),
            source=tree.source,
            commit=tree.commit,
        ) as what:
            summary = ReleaseSummary(
                model=manifest.name,
                status="stopped after source",
                source=tree.source,
                ref=ref,
                git_sha=tree.commit,
                git_dirty=tree.dirty,
                flow_run_id=str(flow_run.get_id()),
            )
            superseded = run_stage(still_tip, tree, settings) if tree.branch else None
            if superseded or until == "source":
                summary = _skipped(summary, superseded) if superseded else summary
                what["outcome"] = summary.status
                return _timed(summary, start, timings)
            # Under the model's build lock: the cached stages' records (data's too) are read and
            # written by one release at a time, and a newer push's release cannot slip in
            # between the tip check and the build.
            with (
                concurrency(
                    build_lock(manifest.name), occupy=1, timeout_seconds=LOCK_WAIT_S, strict=True
                ),
                sandbox_stages.ahead(manifest, settings, wanted=until != "data") as ahead,
            ):
                inputs = _inputs(tree, manifest, summary.flow_run_id, settings, ahead)
                summary = summary.model_copy(
                    update={"fingerprint": inputs.fingerprint, "mlflow_run_id": inputs.run_id}
                )
                summary, shown = _locked(inputs, summary, until, strategy)
            summary = summary.model_copy(
                update=_urls(
                    settings, inputs.experiment, inputs.run_id, manifest.name, summary.version
                )
            )
            summary = _timed(summary, start, timings)
            if shown is not None:
                _publish(summary, shown)
            what.update(
                outcome=summary.status,
                version=summary.version,
                digest=summary.image_digest,
                champion_before=summary.previous_version,
                champion_after=summary.deployed_version,
            )
            return summary


def _expect_later_stages(settings: Settings) -> None:
    """What the stages after the sandboxed ones import, in the order they need it: loaded while
    a sandbox runs (`shipyard.warmup`), so a new commit's release does not wait for it after."""
    store = (
        ["mlflow.store.tracking.sqlalchemy_store"]
        if registry.store_uri(settings).startswith("sqlite")
        else []
    )
    warmup.expect(
        "mlflow",
        *store,
        "onnx",
        "onnxruntime",
        report.pyplot,
        "mlflow.models",
        "mlflow.onnx",
        registration.load_requirement_checks,
    )


def _timed(summary: ReleaseSummary, start: float, timings: list[StageTiming]) -> ReleaseSummary:
    """`summary` with the release's wall time so far and the stages it ran."""
    seconds = round(time.perf_counter() - start, 2)
    return summary.model_copy(update={"seconds": seconds, "stages": list(timings)})


def _data(
    tree: Checkout, manifest: Manifest, settings: Settings, ahead: Path | None
) -> tuple[Dataset, str]:
    """The `data` stage, cached by the fingerprint of its inputs when they alone determine the
    data (`sandbox.stages.sealed`): a release of an unchanged tree starts no sandbox for it. When
    it runs (new inputs), so will train and export: its sandbox runs them ahead, into `ahead`."""
    if not sandbox_stages.sealed(manifest, settings):
        return run_stage(load_data, tree, manifest, settings)
    key = data_inputs(tree.tree_hash, manifest.model_dump_json(), sandbox_stages.describe(settings))
    return run_stage(cached(load_data, settings), tree, manifest, settings, key, ahead)


def _inputs(
    tree: Checkout,
    manifest: Manifest,
    flow_run_id: str | None,
    settings: Settings,
    ahead: Path | None,
) -> Inputs:
    """The release's fixed inputs: its data, its fingerprint, and its MLflow run (the one of an
    earlier release of the same fingerprint, if any)."""
    data, data_hash = _data(tree, manifest, settings, ahead)
    packages = package_versions(PACKAGES[manifest.framework])
    packages["(project code ran in)"] = sandbox_stages.describe(settings)
    fp = compute_fingerprint(tree.tree_hash, data_hash, manifest.canonical_json(), packages)
    get_run_logger().info(
        "Release %s at %s: fingerprint %s", manifest.name, tree.commit or "working tree", fp
    )
    mlflow = registry.client(settings)
    experiment = registry.experiment_id(mlflow, settings, manifest.name)
    run_id = registry.release_run(
        mlflow,
        experiment,
        fp,
        registry.summary_tags(
            {
                "git_sha": tree.commit,
                "source": tree.source,
                "data_sha256": data_hash,
                "prefect_flow_run_id": flow_run_id,
            }
        ),
    )
    return Inputs(tree, manifest, data, data_hash, fp, experiment, run_id, settings, ahead)


def _locked(
    inputs: Inputs, summary: ReleaseSummary, until: Stage, strategy: Strategy | None
) -> tuple[ReleaseSummary, Report | None]:
    """Under the build lock: the tip checked again, then the stages; the MLflow run ends
    FINISHED, KILLED (skipped) or FAILED with them."""
    mlflow = registry.client(inputs.settings)
    tree = inputs.tree
    try:
        # A newer push's release cannot slip in between check and build.
        superseded = run_stage(still_tip, tree, inputs.settings) if tree.branch else None
        if superseded:
            summary, shown = _skipped(summary, superseded), None
        else:
            summary, shown = _stages(inputs, summary, until, strategy)
    except BaseException:
        mlflow.set_terminated(inputs.run_id, "FAILED")
        raise
    mlflow.set_terminated(inputs.run_id, "KILLED" if superseded else "FINISHED")
    return summary, shown


def _skipped(summary: ReleaseSummary, reason: str) -> ReleaseSummary:
    get_run_logger().warning("Release of %s skipped: %s", summary.model, reason)
    return summary.model_copy(update={"status": f"skipped: {reason}"})


def _publish(summary: ReleaseSummary, shown: Report) -> None:
    """The release report (and a link to the MLflow run) as Prefect artifacts."""
    markdown = report.release_markdown(summary, shown.rows, shown.gates, shown.pictures)
    create_markdown_artifact(
        markdown,
        key=report.artifact_key(summary.model, "release-report"),
        description=f"Release report of {summary.model}",
    )
    if summary.mlflow_run_url:
        create_link_artifact(
            summary.mlflow_run_url,
            link_text="MLflow run",
            key=report.artifact_key(summary.model, "mlflow-run"),
        )


def _pushed_before(settings: Settings, version: RegisteredVersion) -> Target | None:
    """A reused version's image, when it is still in the registry and is what its tags say:
    re-releasing unchanged inputs then builds, smoke-tests and pushes nothing (the image was
    smoke-tested when it was built; the rollout's gates still run). Else None: build it."""
    if not version.reused or version.tags.pinned_image is None:
        return None
    found = registry.client(settings).get_model_version(version.model, version.version)
    try:
        return target_of_version(settings, version.model, found)
    except ShipyardError as e:
        get_run_logger().info("Building v%s's image again: %s", version.version, e)
        return None


def _stages(
    inputs: Inputs, summary: ReleaseSummary, until: Stage, strategy: Strategy | None
) -> tuple[ReleaseSummary, Report | None]:
    """The stages after `data`, up to `until`: the summary they fill, and the report's parts
    once `validate` has run."""

    def stop_after(stage: Stage) -> bool:
        return STAGES.index(stage) >= STAGES.index(until)

    def status(text: str, **fields: Any) -> ReleaseSummary:
        return summary.model_copy(update={"status": text, **fields})

    tree, manifest, data, fp, settings = (
        inputs.tree,
        inputs.manifest,
        inputs.data,
        inputs.fingerprint,
        inputs.settings,
    )
    if stop_after("data"):
        return status("stopped after data"), None
    trained = run_stage(
        cached(train, settings), tree, manifest, data, fp, inputs.run_id, settings, inputs.ahead
    )
    summary = status("stopped after train", metrics=dict(trained.metrics))
    if stop_after("train"):
        return summary, None
    fp32 = run_stage(cached(export, settings), trained, tree, manifest, fp, settings, inputs.ahead)
    if stop_after("export"):
        return status("stopped after export"), None
    measurements = run_stage(
        cached(optimize, settings), fp32, trained, manifest, data, fp, settings
    )
    if stop_after("optimize"):
        return status("stopped after optimize"), None
    verdict = run_stage(validate, measurements, manifest, fp, inputs.run_id, settings)
    chosen = next(m for m in measurements if m.variant == verdict.chosen)
    shown = Report(
        rows=report.variant_rows(measurements, verdict),
        gates=[r.message for r in verdict.results if r.variant == verdict.chosen],
        pictures=[
            settings.builds_dir / fp / "report" / name for name in ("variants.png", "confusion.png")
        ],
    )
    summary = status(
        "validated",
        variant=chosen.variant.value,
        onnx_sha256=chosen.sha256,
        metrics={
            **(summary.metrics or {}),
            "accuracy": chosen.accuracy,
            "size_bytes": chosen.size_bytes,
            "p50_b1_ms": chosen.batch1.p50_ms,
            "p99_b1_ms": chosen.batch1.p99_ms,
            "p50_b32_ms": chosen.batch32.p50_ms,
            "p99_b32_ms": chosen.batch32.p99_ms,
        },
    )
    if stop_after("validate"):
        return summary, shown
    version = run_stage(
        register,
        manifest,
        tree,
        data,
        inputs.data_hash,
        measurements,
        verdict,
        fp,
        inputs.run_id,
        settings,
    )
    summary = status("registered", version=version.version, reused=version.reused)
    if stop_after("register"):
        return summary, shown
    unchanged = None if stop_after("build") else _pushed_before(settings, version)
    if unchanged is not None:
        summary = status("pushed", image=version.tags.image, image_digest=version.tags.image_digest)
        if stop_after("push"):
            return summary, shown
        deployed = rollout(
            unchanged,
            strategy or manifest.deploy.strategy,
            manifest.deploy,
            settings,
            record_policy=True,
        )
        return summary.deployed(deployed), shown
    image = run_stage(build_image, manifest, tree, chosen, data, fp, version.version, settings)
    summary = status("built", image_size_bytes=image.size_bytes)
    if stop_after("build"):
        return status("built", image=image.reference), shown
    pushed = run_stage(push_image, image, manifest.name, version.version, inputs.run_id, settings)
    summary = status("pushed", image=pushed.reference, image_digest=pushed.digest)
    if stop_after("push"):
        return summary, shown
    target = target_of_release(manifest.name, version.version, pushed.pinned, image.golden)
    deployed = rollout(
        target, strategy or manifest.deploy.strategy, manifest.deploy, settings, record_policy=True
    )
    return summary.deployed(deployed), shown
