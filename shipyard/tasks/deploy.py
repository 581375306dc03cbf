"""Stages `deploy`, `crown` and `retire`: roll a pushed image out behind the stable endpoint.

They run in one Prefect transaction (see `flows/deploy.py`): when a later one fails, the
earlier ones' `on_rollback` hooks put traffic and the MLflow aliases back as they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from shipyard import registry
from shipyard.manifest import DeployPolicy, Strategy
from shipyard.settings import Settings

if TYPE_CHECKING:
    from shipyard.deploy.endpoint import Target

# `Endpoint` (the engine's client, the proxy, the serving checks) is imported by the stages that
# open one: a flow that imports these tasks starts without it. `open_endpoint` picks the Docker
# or the Swarm endpoint by `deploy.target`.


def _remember(**values: Any) -> None:
    transaction = get_transaction()
    if transaction is not None:  # called outside a transaction (tests), nothing to undo
        for key, value in values.items():
            transaction.set(key, value)


@task(name="deploy", cache_policy=NO_CACHE)
def deploy(
    target: Target,
    strategy: Strategy,
    policy: DeployPolicy | None,
    record_policy: bool,
    settings: Settings,
) -> str:
    """Start `target` beside what serves, gate it, and move traffic to it by `strategy`;
    return the endpoint's URL."""
    from shipyard.deploy.targets import open_endpoint

    endpoint = open_endpoint(
        settings, target.model, policy, get_run_logger().info, keep=record_policy
    )
    endpoint.deploy(target, strategy)
    _remember(settings=settings, model=target.model)
    return endpoint.deployment.url


@deploy.on_rollback
def _revert_traffic(transaction: Transaction) -> None:
    from shipyard.deploy.targets import open_endpoint

    open_endpoint(transaction.get("settings"), transaction.get("model"), None).revert()


@task(name="crown", cache_policy=NO_CACHE)
def crown(model: str, version: str, settings: Settings) -> str | None:
    """Point MLflow's `champion` at the deployed version, and `previous` at the one before;
    return what `previous` names now."""
    champion, previous = registry.crown(registry.client(settings), model, version)
    _remember(settings=settings, model=model, champion=champion, previous=previous)
    return champion if champion != version else previous


@crown.on_rollback
def _restore_aliases(transaction: Transaction) -> None:
    settings: Settings = transaction.get("settings")
    registry.restore_crown(
        registry.client(settings),
        transaction.get("model"),
        transaction.get("champion"),
        transaction.get("previous"),
    )


@task(name="retire", cache_policy=NO_CACHE)
def retire(
    model: str, policy: DeployPolicy | None, record_policy: bool, settings: Settings
) -> None:
    """Keep the old version warm while the new one is watched, then drain and remove it."""
    from shipyard.deploy.targets import open_endpoint

    open_endpoint(settings, model, policy, get_run_logger().info, keep=record_policy).retire()
