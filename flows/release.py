"""The `release` flow: source → data → train → export → optimize → validate → register →
build → push → deploy (→ crown → retire).

Each stage is one Prefect task, visible in the UI; the expensive ones are cached by the
release fingerprint. Deploy is `flows/deploy.py`, shared with `promote` and `rollback`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run
from prefect.utilities.urls import url_for

from flows.deploy import LOCK_WAIT_S, model_lock, rollout, target_of_release
from flows.stages import run_stage
from shipyard import registry, report
from shipyard.deploy.rollout import Strategy
from shipyard.fingerprint import fingerprint as compute_fingerprint
from shipyard.fingerprint import package_versions
from shipyard.frameworks import adapter_for
from shipyard.settings import Settings
from shipyard.source import redact
from tasks.build_image import build_image
from tasks.caching import by_fingerprint
from tasks.data import load_data
from tasks.export import export
from tasks.optimize import optimize
from tasks.push_image import push_image
from tasks.register import register
from tasks.source import checkout
from tasks.train import train
from tasks.validate import artifact_key, validate

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
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Release the model project at SOURCE (a directory, or a git URL at `ref`).

    Returns the release summary; raises on the first failed stage, after marking the
    MLflow run failed. Nothing is registered unless every gate passed; `champion` moves only
    when the deploy (by `strategy`, default the manifest's `deploy.strategy`) passed every step.
    """
    settings = settings or Settings()
    logger = get_run_logger()
    tree, manifest = run_stage(checkout, source, ref, subdir, settings)
    summary: dict[str, Any] = {
        "model": manifest.name,
        "source": tree.source,
        "ref": ref,
        "git_sha": tree.commit,
        "git_dirty": tree.dirty,
        "flow_run_id": flow_run.get_id(),
    }
    if until == "source":
        return {**summary, "status": "stopped after source"}
    data, data_hash = run_stage(load_data, tree, manifest)
    packages = package_versions(adapter_for(manifest.framework).packages)
    fp = compute_fingerprint(tree.tree_hash, data_hash, manifest.canonical_json(), packages)
    summary["fingerprint"] = fp
    logger.info(
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
                "prefect_flow_run_id": summary["flow_run_id"],
            }
        ),
    )
    summary["mlflow_run_id"] = run_id
    cache = by_fingerprint(settings)
    try:
        with concurrency(
            model_lock(manifest.name), occupy=1, timeout_seconds=LOCK_WAIT_S, strict=True
        ):
            result = _stages(
                summary,
                until,
                strategy,
                tree,
                manifest,
                data,
                data_hash,
                fp,
                run_id,
                cache,
                settings,
            )
    except BaseException:
        mlflow.set_terminated(run_id, "FAILED")
        raise
    mlflow.set_terminated(run_id, "FINISHED")
    result.update(_urls(settings, experiment, run_id, manifest.name, result.get("version")))
    if "rows" in result:
        markdown = report.release_markdown(
            result, result.pop("rows"), result.pop("gates"), result.pop("pictures")
        )
        create_markdown_artifact(
            markdown,
            key=artifact_key(manifest.name, "release-report"),
            description=f"Release report of {manifest.name}",
        )
        if "mlflow_run_url" in result:
            create_link_artifact(
                result["mlflow_run_url"],
                link_text="MLflow run",
                key=artifact_key(manifest.name, "mlflow-run"),
            )
    return result


def _stages(
    summary: dict[str, Any],
    until: Stage,
    strategy: Strategy | None,
    tree: Any,
    manifest: Any,
    data: Any,
    data_hash: str,
    fp: str,
    run_id: str,
    cache: Any,
    settings: Settings,
) -> dict[str, Any]:
    def stop_after(stage: Stage) -> bool:
        return STAGES.index(stage) >= STAGES.index(until)

    if stop_after("data"):
        return {**summary, "status": "stopped after data"}
    trained = run_stage(
        train.with_options(cache_policy=cache), tree, manifest, data, fp, run_id, settings
    )
    summary["metrics"] = dict(trained.metrics)
    if stop_after("train"):
        return {**summary, "status": "stopped after train"}
    fp32 = run_stage(export.with_options(cache_policy=cache), trained, manifest, fp, settings)
    if stop_after("export"):
        return {**summary, "status": "stopped after export"}
    measurements = run_stage(
        optimize.with_options(cache_policy=cache), fp32, trained, manifest, data, fp, settings
    )
    if stop_after("optimize"):
        return {**summary, "status": "stopped after optimize"}
    verdict = run_stage(validate, measurements, manifest, fp, run_id, settings)
    chosen = next(m for m in measurements if m.variant == verdict.chosen)
    summary.update(
        {
            "variant": chosen.variant.value,
            "onnx_sha256": chosen.sha256,
            "metrics": {
                **summary["metrics"],
                "accuracy": chosen.accuracy,
                "size_bytes": chosen.size_bytes,
                "p50_b1_ms": chosen.batch1.p50_ms,
                "p99_b1_ms": chosen.batch1.p99_ms,
                "p50_b32_ms": chosen.batch32.p50_ms,
                "p99_b32_ms": chosen.batch32.p99_ms,
            },
            "rows": report.variant_rows(measurements, verdict),
            "gates": [r.message for r in verdict.results if r.variant == verdict.chosen],
            "pictures": [
                settings.builds_dir / fp / "report" / name
                for name in ("variants.png", "confusion.png")
            ],
        }
    )
    if stop_after("validate"):
        return {**summary, "status": "validated"}
    version = run_stage(
        register, manifest, tree, data, data_hash, measurements, verdict, fp, run_id, settings
    )
    summary.update({"version": version.version, "reused": version.reused, "status": "registered"})
    if stop_after("register"):
        return summary
    image = run_stage(build_image, manifest, tree, chosen, data, fp, version.version, settings)
    summary.update({"image_size_bytes": image.size_bytes, "status": "built"})
    if stop_after("build"):
        return {**summary, "image": image.reference}
    pushed = run_stage(push_image, image, manifest.name, version.version, run_id, settings)
    summary.update({"image": pushed.reference, "image_digest": pushed.digest, "status": "pushed"})
    if stop_after("push"):
        return summary
    target = target_of_release(manifest.name, version.version, pushed.pinned, image.golden)
    deployed = rollout(
        target, strategy or manifest.deploy.strategy, manifest.deploy, settings, record_policy=True
    )
    return {**summary, **deployed, "status": "deployed"}
