"""Stages `deploy`, `crown` and `retire`: roll a pushed image out behind the stable endpoint.

They run in one Prefect transaction (see `flows/deploy.py`): when a later one fails, the
earlier ones' `on_rollback` hooks put traffic and the MLflow aliases back as they were.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from shipyard import registry
from shipyard.deploy.rollout import Rollout, Strategy, Target
from shipyard.manifest import Deploy
from shipyard.settings import Settings


def _remember(**values: Any) -> None:
    transaction = get_transaction()
    if transaction is not None:  # called outside a transaction (tests), nothing to undo
        for key, value in values.items():
            transaction.set(key, value)


@task(name="deploy", cache_policy=NO_CACHE)
def deploy(
    target: Target,
    strategy: Strategy,
    policy: Deploy | None,
    record_policy: bool,
    settings: Settings,
) -> dict[str, Any]:
    """Start `target` beside what serves, gate it, and move traffic to it by `strategy`."""
    logger = get_run_logger()
    rollout = Rollout(settings, target.model, policy, logger.info, keep=record_policy)
    if rollout.deployment.live is None and strategy != "recreate":
        logger.info("deploy: nothing serves %s yet: a first deploy is a recreate", target.model)
    try:
        color = rollout.start(target, strategy)
        rollout.shift(strategy)
    except BaseException as e:
        if not rollout.reverted:  # errors that are not gates (engine, proxy) revert here
            if isinstance(e, Exception):
                rollout.revert_after(e)
            else:
                rollout.revert()  # interrupted: undo, and let the interruption through
        raise
    _remember(settings=settings, model=target.model)
    return {"endpoint": rollout.deployment.url, "color": color}


@deploy.on_rollback
def _revert_traffic(transaction: Transaction) -> None:
    Rollout(transaction.get("settings"), transaction.get("model"), None).revert()


@task(name="crown", cache_policy=NO_CACHE)
def crown(model: str, version: str, settings: Settings) -> dict[str, str | None]:
    """Point MLflow's `champion` at the deployed version, and `previous` at the one before."""
    champion, previous = registry.crown(registry.client(settings), model, version)
    _remember(settings=settings, model=model, champion=champion, previous=previous)
    return {"champion": version, "previous": champion if champion != version else previous}


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
def retire(model: str, policy: Deploy | None, record_policy: bool, settings: Settings) -> None:
    """Keep the old version warm while the new one is watched, then drain and remove it."""
    Rollout(settings, model, policy, get_run_logger().info, keep=record_policy).retire()
