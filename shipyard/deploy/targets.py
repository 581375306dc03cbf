"""An endpoint on its target (`deploy.target`): what the stages, `shipyard undeploy`, `scale`,
`status` and `stack up` call, each picking the Docker target (`endpoint`) or Swarm's
(`swarm_endpoint`) from the recorded deployment, else from the policy of the rollout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from docker.errors import APIError

from shipyard import engine
from shipyard.deploy import endpoint as docker_endpoint
from shipyard.deploy import inspect, state
from shipyard.deploy import swarm_specs as specs
from shipyard.deploy.endpoint import Endpoint
from shipyard.deploy.swarm_endpoint import SwarmEndpoint, proxy_of
from shipyard.errors import DeployError
from shipyard.manifest import DeployPolicy
from shipyard.processes import Started
from shipyard.settings import Settings
from shipyard.waiting import TimedOut, wait_until

Say = Callable[[str], None]


def is_swarm(settings: Settings, model: str, policy: DeployPolicy | None = None) -> bool:
    """Whether `model`'s endpoint is (or, when none is recorded, is to be) on the Swarm target.

    A recorded endpoint keeps its target: changing `deploy.target` needs an undeploy first."""
    recorded = state.load(settings.deploy_dir, model)
    if recorded is not None:
        if policy is not None and policy.target != recorded.policy.target:
            raise DeployError(
                f"{model} serves on the {recorded.policy.target} target; deploy.target "
                f"{policy.target!r} applies after `shipyard undeploy {model}`."
            )
        return recorded.policy.target == "swarm"
    return policy is not None and policy.target == "swarm"


def open_endpoint(
    settings: Settings,
    model: str,
    policy: DeployPolicy | None,
    say: Say = lambda _: None,
    keep: bool = True,
) -> Endpoint:
    """The endpoint of `model` on its target (`deploy.target`)."""
    cls = SwarmEndpoint if is_swarm(settings, model, policy) else Endpoint
    return cls.open(settings, model, policy, say, keep)


def recover(settings: Settings, model: str, say: Say = lambda _: None) -> str:
    """`endpoint.recover` on the Docker target; on Swarm, the proxy service and a cut-off rollout
    (Swarm itself restarts tasks and reschedules them)."""
    if not is_swarm(settings, model):
        return docker_endpoint.recover(settings, model, say)
    endpoint = SwarmEndpoint.open(settings, model, None, say)
    d = endpoint.deployment
    done = []
    if d.candidate is not None or d.replaced is not None:
        owner = Started.from_json(d.rollout_by)
        if owner is not None and owner.alive():
            return f"a rollout is under way (pid {owner.pid}): left to it"
        endpoint.revert()
        done.append("a cut-off rollout was undone")
    live = d.serving()
    serves = f"v{live.version} serves {d.url}" if live else f"nothing serves {d.url}"
    return "; ".join([serves, *done])


def scale(
    settings: Settings, model: str, replicas: int, say: Say = lambda _: None
) -> dict[str, int]:
    """`shipyard scale`: the serving version of `model` (target swarm) to `replicas` tasks;
    returns its running tasks by node."""
    endpoint = _swarm_endpoint(settings, model, "scale", say)
    endpoint.scale(replicas)
    return _placed(endpoint)


def rebalance(settings: Settings, model: str, say: Say = lambda _: None) -> dict[str, int]:
    """`shipyard rebalance`: the serving version's replicas of `model` (target swarm) replaced
    one at a time, so they spread over the nodes ready now; returns them by node."""
    endpoint = _swarm_endpoint(settings, model, "rebalance", say)
    endpoint.rebalance()
    return _placed(endpoint)


def _swarm_endpoint(settings: Settings, model: str, command: str, say: Say) -> SwarmEndpoint:
    if state.load(settings.deploy_dir, model) is None:
        raise DeployError(f"{model} is not deployed: `shipyard release SOURCE` deploys it.")
    if not is_swarm(settings, model):
        raise DeployError(
            f"{model} serves on the docker target, one container per version: `{command}` "
            "needs deploy.target: swarm (then `shipyard undeploy` and release again)."
        )
    return SwarmEndpoint.open(settings, model, None, say)


def _placed(endpoint: SwarmEndpoint) -> dict[str, int]:
    """The serving version's running tasks by node."""
    live = endpoint.deployment.live
    assert live is not None
    service = specs.find_service(endpoint.client, endpoint._service(live))
    return specs.per_node(endpoint.client, service) if service else {}


def undeploy(settings: Settings, model: str, say: Say = lambda _: None) -> bool:
    """`endpoint.undeploy` on the Docker target; on Swarm: drain and remove every service of
    the endpoint, its proxy service, network and secrets, and forget its state."""
    if not is_swarm(settings, model):
        return docker_endpoint.undeploy(settings, model, say)
    deployment = state.load(settings.deploy_dir, model)
    assert deployment is not None
    client = engine.engine(settings)
    proxy = proxy_of(client, settings, deployment)
    for color, instance in deployment.instances.items():
        with contextlib.suppress(DeployError):
            proxy.drain(color)
        specs.remove_service(client, proxy.services[color])
        say(f"removed {color} v{instance.version}")
    proxy.stop()
    specs.remove_unused_secrets(client, model, set())

    def network_gone() -> bool:  # refused while the removed tasks still leave it
        try:
            client.networks.get(proxy.network).remove()
        except APIError as e:
            return bool(e.status_code == 404)
        return True

    with contextlib.suppress(TimedOut):
        wait_until(network_gone, 20, 0.5)
    state.path(settings.deploy_dir, model).unlink()
    say(f"stopped the endpoint {deployment.url}")
    return True


def describe(settings: Settings, model: str) -> dict[str, Any] | None:
    """`inspect.describe` on the Docker target; on Swarm, each slot's service with its replicas
    per node, the weight, and how many replicas HAProxy's checks see UP."""
    if not is_swarm(settings, model):
        return inspect.describe(settings, model)
    deployment = state.load(settings.deploy_dir, model)
    assert deployment is not None
    described = SwarmEndpoint.attach(settings, deployment).describe()
    return {**described, "strategy": deployment.policy.strategy}


def logs(
    settings: Settings, model: str, tail: int, follow: bool, color: str | None = None
) -> Iterator[bytes]:
    """`inspect.logs` on the Docker target; on Swarm, every replica's lines from whichever node
    runs it, each prefixed with its color, version and node."""
    if not is_swarm(settings, model):
        yield from inspect.logs(settings, model, tail, follow, color)
        return
    deployment = state.load(settings.deploy_dir, model)
    assert deployment is not None
    instances = inspect.chosen(deployment, model, follow, color)
    client = engine.engine(settings)
    for instance in instances:
        for node, line in specs.logs(client, instance.container_id, tail, follow):
            yield f"[{instance.color} v{instance.version} {node}] ".encode() + line + b"\n"
