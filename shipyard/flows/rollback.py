"""The `rollback` flow: serve the `previous` version again, in one command.

It redeploys the previous version's image by digest (blue-green, gated like any deploy, without
keeping the rolled-back version warm) and swaps `champion` and `previous`.
"""

from __future__ import annotations

from prefect import flow

from shipyard import audit, registry
from shipyard.contracts import RolloutResult
from shipyard.deploy import state
from shipyard.errors import RegistryError
from shipyard.flows.rollout import rollout, target_of_version
from shipyard.manifest import DeployPolicy
from shipyard.settings import Settings


@flow(name="rollback", flow_run_name="rollback-{model}", validate_parameters=True)
def rollback(model: str, settings: Settings | None = None) -> RolloutResult:
    """Deploy `model`'s `previous` version; it becomes `champion` again."""
    settings = settings or Settings()
    with audit.audited(settings, "rollback", model, audit.who()) as what:
        previous = registry.version_by_alias(registry.client(settings), model, registry.PREVIOUS)
        if previous is None:
            raise RegistryError(
                f"{model} has no {registry.PREVIOUS!r} version to roll back to: it is set when a "
                "deploy replaces a champion. `shipyard status "
                f"{model}` shows its aliases; `shipyard promote {model} --version N` deploys any version."
            )
        deployed = state.load(settings.deploy_dir, model)
        policy = (deployed.policy if deployed else DeployPolicy()).model_copy(
            update={"keep_blue_seconds": 0}
        )
        target = target_of_version(settings, model, previous)
        what.update(version=target.version, digest=target.image)
        result = rollout(target, "blue-green", policy, settings)
        what.update(champion_before=result.previous_version, champion_after=target.version)
        return result.model_copy(update={"rolled_back_to": target.version})
