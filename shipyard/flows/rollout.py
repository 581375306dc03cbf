"""Deploying a registered version: `deploy → crown → retire`, undone as a whole on failure.

The release flow runs it after `push`; the `promote` and `rollback` flows run it on a version
the registry already holds. Deploys of one model never overlap: each holds the Prefect global
concurrency limit `deploy-<model>` (one slot) from the first container to the last alias.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.transactions import transaction

from shipyard import registry
from shipyard.contracts import RolloutResult
from shipyard.deploy import state
from shipyard.errors import DeployError, RegistryError, Superseded
from shipyard.flows.stages import run_stage
from shipyard.manifest import DeployPolicy, Strategy
from shipyard.settings import Settings
from shipyard.tasks.deploy import crown, deploy, retire

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from shipyard.deploy.endpoint import Target

# The engine's client, the endpoint and its checks are imported by the functions that use them:
# the flows that import this module start without them.

LOCK_WAIT_S = 1800


def _one_slot(name: str) -> str:
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    return name


def rollout_lock(model: str) -> str:
    """The model's deploy concurrency limit (one slot, created if missing)."""
    return _one_slot(f"deploy-{model}")


def free_rollout_lock(model: str) -> None:
    """Empty the model's deploy limit after its rollout's process died holding it (the slot's
    lease would keep it taken for up to 5 minutes): the limit is made again, with no slot
    taken. Only for a rollout known to be dead (`shipyard stack up`'s recovery)."""
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(f"deploy-{model}")
    rollout_lock(model)


def build_lock(model: str) -> str:
    """The model's build limit: a webhook release and a nightly rebuild never build at once."""
    return _one_slot(f"build-{model}")


def rollout(
    target: Target,
    strategy: Strategy,
    policy: DeployPolicy | None,
    settings: Settings,
    record_policy: bool = False,
    expect_champion: str | None = None,
) -> RolloutResult:
    """Deploy `target`; on success `champion` names it. On any failure, nothing changed.

    `policy` governs this rollout (default: the endpoint's recorded one); it is recorded for
    later rollouts only with `record_policy` (a release's manifest), not for one-off overrides.
    With `expect_champion`, the rollout happens only if that version is still `champion` once
    the deploy lock is held (else `Superseded`): a redeploy never undoes a newer release.
    """
    from shipyard.deploy import containers
    from shipyard.deploy.endpoint import serving
    from shipyard.engine import engine

    lock = rollout_lock(target.model)
    with concurrency(lock, occupy=1, timeout_seconds=LOCK_WAIT_S, strict=True):
        if expect_champion is not None:
            _check_champion(settings, target.model, expect_champion)
        before = registry.crowned(registry.client(settings), target.model)
        serving_before = serving(settings, target.model)
        recorded = state.load(settings.deploy_dir, target.model)
        if recorded is not None and already_serves(recorded, target, policy, before[0]):
            live = recorded.serving()
            if live is not None and containers.running(engine(settings), live.container_id):
                logging.getLogger(__name__).info(
                    "%s v%s already serves %s with this image and policy: nothing to roll out",
                    target.model,
                    target.version,
                    recorded.url,
                )
                return RolloutResult(
                    model=target.model,
                    endpoint=recorded.url,
                    deployed_version=target.version,
                    previous_version=before[1],
                    strategy="unchanged",
                )
        try:
            with transaction():
                endpoint = run_stage(deploy, target, strategy, policy, record_policy, settings)
                previous = run_stage(crown, target.model, target.version, settings)
                run_stage(retire, target.model, policy, record_policy, settings)
        except Exception as e:
            # Prefect logs a rollback hook that fails and goes on: say so in the error itself.
            left = _not_undone(
                settings, target.model, before, serving_before.version if serving_before else None
            )
            if left:
                fix = (
                    f"`shipyard promote {target.model} --version {before[0]}` serves the champion "
                    "again"
                    if before[0]
                    else f"`shipyard undeploy {target.model}` clears the endpoint"
                )
                raise DeployError(
                    f"{e}\nThe undo is incomplete: {'; '.join(left)}. `shipyard status "
                    f"{target.model}` shows the state; {fix}.",
                    getattr(e, "failures", []),
                ) from e
            raise
    return RolloutResult(
        model=target.model,
        endpoint=endpoint,
        deployed_version=target.version,
        previous_version=previous,
        strategy=strategy,
    )


def already_serves(
    recorded: state.Deployment, target: Target, policy: DeployPolicy | None, champion: str | None
) -> bool:
    """Whether the endpoint already serves `target` as it would after the rollout: the same
    version, by the same image, as `champion`, under the same policy. Then a rollout would
    only replace a container by its twin."""
    live = recorded.serving()
    return (
        live is not None
        and live.version == target.version == champion
        and live.image == target.image
        and (policy is None or policy == recorded.policy)
    )


def _not_undone(
    settings: Settings,
    model: str,
    before: tuple[str | None, str | None],
    served_before: str | None,
) -> list[str]:
    """What a failed rollout's rollback left changed: aliases, what serves, a candidate."""
    left = []
    try:
        now = registry.crowned(registry.client(settings), model)
        if now != before:
            named = [f"v{v}" if v else "none" for v in (*now, *before)]
            left.append(f"champion/previous are {named[0]}/{named[1]}, were {named[2]}/{named[3]}")
    except Exception as e:  # MLflow down: the likeliest reason a hook failed
        left.append(f"MLflow's aliases could not be read back ({type(e).__name__}: {e})")
    deployment = state.load(settings.deploy_dir, model)
    instance = deployment.serving() if deployment else None
    served = instance.version if instance else None
    if served != served_before:
        left.append(
            f"{f'v{served}' if served else 'nothing'} serves, "
            f"{f'v{served_before}' if served_before else 'nothing'} did"
        )
    if deployment is not None and deployment.candidate is not None:
        left.append(f"the new {deployment.candidate} container is still recorded")
    return left


def _check_champion(settings: Settings, model: str, expected: str) -> None:
    current = registry.version_by_alias(registry.client(settings), model, registry.CHAMPION)
    if current is None or str(current.version) != expected:
        now = f"v{current.version}" if current else "none"
        raise Superseded(
            f"{model}: champion is {now}, no longer v{expected}, since this redeploy started: "
            "skipped (the newer release stands)"
        )


def target_of_release(model: str, version: str, image: str, golden: Path) -> Target:
    from shipyard.deploy.checks import Golden
    from shipyard.deploy.endpoint import Target

    return Target(model, version, image, Golden.load(golden))


def target_of_version(settings: Settings, model: str, version: ModelVersion) -> Target:
    """A registered version's pushed image (by digest) and golden data, from MLflow.

    The image must come from the configured registry and hold the version's ONNX file (its
    label names the version's `onnx_sha256` tag), else `DeployError`, before anything changes.
    """
    from shipyard.deploy.checks import Golden
    from shipyard.deploy.endpoint import Target
    from shipyard.deploy.inspect import verify_image

    tags = registry.tags_of(version)
    image = tags.pinned_image
    if image is None:
        raise RegistryError(
            f"{model} v{version.version} has no pushed image (tags image, image_digest): release "
            "it through the push stage first (shipyard release SOURCE)."
        )
    verify_image(settings, model, str(version.version), image, tags.onnx_sha256)
    mlflow = registry.client(settings)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.download_artifacts(str(version.run_id), "image/golden.json", tmp)
        except Exception as e:
            raise RegistryError(
                f"{model} v{version.version}'s run {version.run_id} has no image/golden.json, "
                f"which the rollout's smoke gate needs ({e}). Release it again to record it."
            ) from e
        golden = Golden.load(Path(local))
    return Target(model, str(version.version), image, golden)
