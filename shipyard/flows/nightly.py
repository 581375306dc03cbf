"""The `nightly-rebuild` flow: base-image fixes reach production without retraining.

For every model with a `champion`, rebuild its image from the registered ONNX file on the
current base image and locked dependencies, run the image gates, and redeploy (blue-green,
every deploy gate) only when the image digest changed. The report says, per model, why it did
or did not redeploy.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.concurrency.sync import concurrency

from shipyard import audit, registry
from shipyard.deploy import state
from shipyard.errors import ShipyardError, Superseded
from shipyard.flows.rollout import LOCK_WAIT_S, build_lock, rollout
from shipyard.flows.stages import run_stage
from shipyard.settings import Settings
from shipyard.tasks.rebuild_image import rebuild_image


def champions(settings: Settings, models: list[str] | None) -> list[Any]:
    mlflow = registry.client(settings)
    names = models or []
    if not names:
        token = None
        while True:  # every page, not only the first hundred models
            page = mlflow.search_registered_models(page_token=token)
            names += [m.name for m in page]
            token = page.token
            if not token:
                break
    found = []
    for name in names:
        version = registry.version_by_alias(mlflow, name, registry.CHAMPION)
        if version is not None:
            found.append(version)
    return found


def decide(old_digest: str | None, new_digest: str) -> tuple[bool, str]:
    """Whether to redeploy, and why: only a changed image is worth a rollout."""
    if old_digest == new_digest:
        return False, f"image digest unchanged ({new_digest[:19]}): nothing to redeploy"
    return True, f"image digest changed {str(old_digest)[:19]} → {new_digest[:19]}: redeploying"


def _report(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Nightly rebuild",
        "",
        "| model | champion | base | old digest | new digest | redeployed | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | v{r['version']} | `{r.get('base', '-')[-19:]}` "
            f"| `{str(r.get('old_digest'))[:19]}` | `{str(r.get('new_digest', '-'))[:19]}` "
            f"| {'yes' if r.get('redeployed') else 'no'} | {r['why']} |"
        )
    return "\n".join(lines)


@flow(name="nightly-rebuild", validate_parameters=True)
def nightly_rebuild(
    models: list[str] | None = None, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """Rebuild every champion's image (or `models`'); redeploy those whose digest changed."""
    settings = settings or Settings()
    logger = get_run_logger()
    results = []
    failed = []
    for version in champions(settings, models):
        model, number = str(version.name), str(version.version)
        result: dict[str, Any] = {"model": model, "version": number}
        result["old_digest"] = registry.tags_of(version).image_digest
        try:
            with concurrency(build_lock(model), occupy=1, timeout_seconds=LOCK_WAIT_S, strict=True):
                image = run_stage(rebuild_image, version, settings)
            result.update({"base": image.base, "new_digest": image.digest})
            redeploy, result["why"] = decide(result["old_digest"], image.digest)
            if redeploy and state.load(settings.deploy_dir, model) is None:
                redeploy = False
                result["why"] += " — but it is not deployed on this host: pushed only"
            if redeploy:
                from shipyard.deploy.endpoint import Target
                from shipyard.deploy.inspect import verify_image

                # The rebuilt image must hold the registered ONNX file and be in the registry.
                tags = registry.tags_of(version)
                verify_image(settings, model, number, image.pinned, tags.onnx_sha256)
                # Checked again under the deploy lock: a release or promote that crowned another
                # version while this one rebuilt (or waited for the lock) wins.
                with audit.audited(
                    settings,
                    "nightly-redeploy",
                    model,
                    audit.who(),
                    version=number,
                    digest=image.pinned,
                    replaced_digest=result["old_digest"],
                ):
                    rollout(
                        Target(model, number, image.pinned, image.golden),
                        "blue-green",
                        None,
                        settings,
                        expect_champion=number,
                    )
                    mlflow = registry.client(settings)
                    registry.tag_image(mlflow, model, number, image.reference, image.digest)
                result["redeployed"] = True
        except Superseded as e:
            result["why"] = str(e)
        except Exception as e:  # MLflow's errors too: one model's failure is reported
            result["why"] = f"failed: {e}".replace("\n", " ")[:300]
            failed.append(model)
        logger.info("%s v%s: %s", model, number, result["why"])
        results.append(result)
    create_markdown_artifact(_report(results), key="nightly-rebuild", description="Nightly rebuild")
    if failed:
        raise ShipyardError(f"nightly rebuild failed for {', '.join(failed)}; see the report")
    return results
