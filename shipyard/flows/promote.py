"""The `promote` flow: deploy a version the registry already holds (default: `candidate`)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from shipyard import audit, registry
from shipyard.contracts import RolloutResult
from shipyard.errors import RegistryError
from shipyard.flows.rollout import rollout, target_of_version
from shipyard.manifest import Strategy
from shipyard.settings import Settings


def find_version(settings: Settings, model: str, version: str) -> Any:
    """A version by number or by alias, or a `RegistryError` naming what exists."""
    mlflow = registry.client(settings)
    found = (
        registry.version_by_number(mlflow, model, version)
        if version.isdigit()
        else registry.version_by_alias(mlflow, model, version)
    )
    if found is None:
        aliases = ", ".join(f"{a.alias}=v{a.version}" for a in registry.aliases(mlflow, model))
        raise RegistryError(
            f"{model} has no version {version!r} (aliases: {aliases or 'none'}); pass a version "
            "number or an alias. `shipyard status "
            f"{model}` lists them."
        )
    return found


@flow(name="promote", flow_run_name="promote-{model}-{version}", validate_parameters=True)
def promote(
    model: str,
    version: str = registry.CANDIDATE,
    strategy: Strategy = "blue-green",
    settings: Settings | None = None,
) -> RolloutResult:
    """Deploy `version` (a number or an alias) of `model` by `strategy`; on success it is
    `champion` and the version it replaced is `previous`."""
    settings = settings or Settings()
    with audit.audited(
        settings, "promote", model, audit.who(), requested=version, strategy=strategy
    ) as what:
        target = target_of_version(settings, model, find_version(settings, model, version))
        what.update(version=target.version, digest=target.image)
        result = rollout(target, strategy, None, settings)
        what.update(champion_before=result.previous_version, champion_after=target.version)
        return result
