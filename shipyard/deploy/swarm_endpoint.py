"""A model's endpoint on the Swarm target (`deploy.target: swarm`): each version a Swarm
service of `deploy.replicas` tasks, HAProxy a Swarm service in front of them.

The rollout is the Docker target's (`shipyard.deploy.endpoint.Endpoint`: start, shift, retire,
revert, recorded in the same state file), with a service where it runs a container:

1. `start`: create the new version's service in the idle slot; readiness is every replica
   running (Swarm counts a task as running once the image's health check passes), then the
   golden smoke requests go to a replica of the new service through its gate socket.
2. `shift`: weights move in HAProxy; the metric gates read every replica of the new version
   (its `/metrics`, one replica at a time through the gate).
3. `retire`: the old version's service is drained and removed.

`scale` changes the replica count of the version that serves, without a rollout: HAProxy picks
the new replicas up through Swarm's DNS, and health-checks them before it routes to them.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable
from typing import Any

import docker
import httpx
from docker.models.services import Service

from shipyard import engine
from shipyard.deploy import checks, state, swarm_gates
from shipyard.deploy import swarm_specs as specs
from shipyard.deploy.checks import Counts
from shipyard.deploy.endpoint import Endpoint, Target
from shipyard.deploy.proxy import COLORS
from shipyard.deploy.state import Deployment, Instance
from shipyard.deploy.swarm_proxy import SLOTS, SwarmProxy, split
from shipyard.errors import DeployError
from shipyard.manifest import DeployPolicy, Strategy
from shipyard.settings import Settings
from shipyard.waiting import TimedOut, wait_until

Say = Callable[[str], None]
POLL_S = 0.25
READY_GRACE_S = 2.0
"""How long no replica of the candidate may be UP in HAProxy's view before its readiness gate
fails."""


class SwarmEndpoint(Endpoint):
    """One model's endpoint on the Swarm target; the rollout of `Endpoint`, with services."""

    proxy: SwarmProxy

    @classmethod
    def open(
        cls,
        settings: Settings,
        model: str,
        policy: DeployPolicy | None,
        say: Say = lambda _: None,
        keep: bool = True,
    ) -> SwarmEndpoint:
        client = engine.engine(settings)
        existing = state.load(settings.deploy_dir, model)
        policy = policy or (existing.policy if existing else DeployPolicy(target="swarm"))
        if existing is None:
            existing = Deployment(model=model, host=settings.deploy_host, port=policy.port)
        elif existing.port != policy.port:
            say(
                f"endpoint: {model} already serves on port {existing.port}; deploy.port "
                f"{policy.port} applies after `shipyard undeploy {model}`"
            )
        if existing.host != settings.deploy_host:
            say(
                f"endpoint: {model} is recorded on host {existing.host}; SHIPYARD_DEPLOY_HOST "
                f"{settings.deploy_host} applies after `shipyard undeploy {model}`"
            )
        recorded = (policy if keep else existing.policy).model_copy(update={"port": existing.port})
        existing.policy = policy.model_copy(update={"port": existing.port})
        _login(settings, client)
        specs.ensure_network(client, specs.network_name(model, existing.port))
        endpoint = cls(
            settings, existing, recorded, client, proxy_of(client, settings, existing), say
        )
        endpoint.proxy.ensure_service(endpoint._server_weights(), say)
        return endpoint

    @classmethod
    def attach(cls, settings: Settings, deployment: Deployment) -> SwarmEndpoint:
        """The recorded endpoint as it is, starting and changing nothing (for `status`)."""
        client = engine.engine(settings)
        proxy = proxy_of(client, settings, deployment)
        return cls(settings, deployment, deployment.policy, client, proxy)

    # -- state ---------------------------------------------------------------------------

    def _replicas(self) -> dict[str, int]:
        out = {}
        for color in self.deployment.instances:
            service = specs.find_service(self.client, self._service(color))
            out[color] = specs.replicas(service) if service else 1
        return out

    def _server_weights(self) -> dict[str, int]:
        return split(self.deployment.weights, self._replicas())

    def _save(self) -> None:
        d = self.deployment
        if d.candidate is None and d.replaced is None:
            d.rollout_by = None
        state.save(
            self.settings.deploy_dir, self.deployment.model_copy(update={"policy": self.recorded})
        )
        self.proxy.write_config(self._server_weights())  # what a restarted HAProxy reads

    def _weigh(self, weights: dict[str, int]) -> None:
        self.deployment.weights.update(weights)
        self.proxy.weigh(split(self.deployment.weights, self._replicas()))
        self._save()

    def _service(self, color: str) -> str:
        return specs.service_name(self.deployment.model, self.deployment.port, color)

    def _secret(self) -> tuple[str, str] | None:
        keys = [k.strip() for k in (self._api_key or "").split(",") if k.strip()]
        return specs.ensure_keys_secret(self.client, self.deployment.model, keys) if keys else None

    def run_service(self, image: str, version: str, color: str) -> str:
        """Create the version's service in slot `color`; its id."""
        d = self.deployment
        spec = specs.version_service(
            image=image,
            model=d.model,
            version=version,
            color=color,
            endpoint_port=d.port,
            replicas=d.policy.replicas,
            network=specs.network_name(d.model, d.port),
            environment=self._environment(),
            resources=d.policy.resources,
            secret=self._secret(),
        )
        return str(specs.create_service(self.client, spec).id)

    def wait_replicas(self, color: str, count: int, timeout_s: float) -> None:
        """Every replica of the slot running (healthy), or a readiness failure naming why."""
        name = self._service(color)

        def running() -> bool:
            service = specs.find_service(self.client, name)
            return service is not None and len(specs.tasks(service)) == count

        try:
            wait_until(running, timeout_s, 0.5)
        except TimedOut:
            service = specs.find_service(self.client, name)
            seen = (
                sorted(
                    {
                        f"{t['Status']['State']}: {t['Status'].get('Err', '')}"
                        for t in service.tasks()
                    }
                )
                if service
                else ["no service"]
            )
            raise DeployError(
                f"Gate 'readiness' failed: {count} replica(s) of {name} were not running within "
                f"{timeout_s:.0f} s (limit deploy.ready_seconds); task states: {seen}",
                ["readiness"],
            ) from None

    # -- 1. start ------------------------------------------------------------------------

    def start(self, target: Target, strategy: Strategy) -> str:
        d = self.deployment
        color = self._begin(strategy)
        try:
            service_id = self.run_service(target.image, target.version, color)
        except DeployError as e:
            self.revert_after(e)
            raise
        d.instances[color] = Instance(
            color=color, version=target.version, image=target.image, container_id=service_id, port=0
        )
        d.candidate = color
        d.weights[color] = 0
        self._save()
        replicas = d.policy.replicas
        self.say(f"deploy: started v{target.version} as {color}: {replicas} replica(s)")
        try:
            self.wait_replicas(color, replicas, d.policy.ready_seconds)
            self.proxy.point(color)  # weight 0: routable once weighed
            self.proxy.wait_up(color, timeout_s=30, count=replicas)
            # The metric gates read the replicas the gate backend sees UP: its own checks may
            # still see the replaced version's addresses a moment longer.
            self.proxy.wait_up(color, timeout_s=30, count=replicas, backend=f"gate-{color}")
            with swarm_gates.gate(self.proxy, color) as gate:
                failures = swarm_gates.smoke(gate, target.golden, self._api_key)
            if failures:
                raise DeployError(failures[0], failures)
        except DeployError as e:
            raise self._gate_failed(e, color) from e
        self.say(f"deploy: {color} v{target.version}: {replicas} replica(s) ready, golden ok")
        return color

    # -- 2. shift: `Endpoint.shift`; its gates read every replica ------------------------

    def watch(self, seconds: float) -> list[str]:
        d = self.deployment
        assert d.candidate is not None
        color, instance = d.candidate, d.instances[d.candidate]
        try:
            baseline = swarm_gates.scrape(self.proxy, color)
        except (httpx.HTTPError, DeployError) as e:
            return [f"Gate 'metrics' failed: the replicas of {color} did not answer ({e})"]
        deadline = time.monotonic() + seconds
        none_up_since: float | None = None
        while True:
            service = specs.find_service(self.client, self._service(color))
            if service is None or not specs.tasks(service):
                return [f"Gate 'running' failed: no replica of {color} v{instance.version} runs"]
            try:
                current, why = swarm_gates.scrape(self.proxy, color), ""
            except (httpx.HTTPError, DeployError) as e:
                current, why = {}, f": {type(e).__name__} {e}"
            if not current:
                # HAProxy marks a replica DOWN after two missed checks (1 s: a busy machine
                # can miss them) and UP again after one: none UP fails once it lasts.
                now = time.monotonic()
                none_up_since = none_up_since or now
                if now - none_up_since < READY_GRACE_S and now < deadline:
                    time.sleep(POLL_S)
                    continue
                if not why:
                    seen = collections.Counter(
                        s.status for s in self.proxy.servers(f"gate-{color}") if s.color == color
                    )
                    why = f" (HAProxy's gate-{color} servers: {dict(seen)})"
                return [
                    f"Gate 'readiness' failed: no replica of {color} v{instance.version} is UP"
                    + why
                ]
            none_up_since = None
            # A replica new since the baseline (rescheduled, scaled) counts from zero.
            before = swarm_gates.add([baseline.get(k, Counts(0, 0, ())) for k in current])
            failures = checks.judge(
                checks.window(before, swarm_gates.add(list(current.values()))), d.policy
            )
            if failures or time.monotonic() >= deadline:
                return failures
            time.sleep(POLL_S)

    # -- 3. retire -----------------------------------------------------------------------

    def _discard(self, color: str, instance: Instance) -> None:
        """Remove the drained slot's service (all its replicas)."""
        specs.remove_service(self.client, self._service(color))

    # -- undo ----------------------------------------------------------------------------

    def revert(self) -> None:
        self.reverted = True
        d = self.deployment
        new, old = d.candidate, d.live
        if new is None and d.replaced is None:
            return
        if new is not None:
            weights = {old: 100} if old is not None else {}
            d.weights.update(weights)
            d.weights.pop(new, None)
            try:
                self.proxy.weigh(split(d.weights, self._replicas()))
                self.proxy.drain(new)
            except DeployError as e:
                if self.proxy.pid() is not None:
                    raise
                self.say(f"deploy: warning: the proxy did not take the revert ({e})")
            d.instances.pop(new, None)
            specs.remove_service(self.client, self._service(new))
            d.candidate = None
            self._save()
        if d.replaced is not None:
            self._restore(d.replaced)
            old = d.live
        self.say(
            f"deploy: reverted: {f'{old} v{d.instances[old].version} serves' if old else 'nothing serves'}"
        )

    def _restore(self, instance: Instance) -> None:
        d = self.deployment
        service_id = self.run_service(instance.image, instance.version, instance.color)
        try:
            self.wait_replicas(instance.color, d.policy.replicas, d.policy.ready_seconds)
            self.proxy.point(instance.color)
        except DeployError as e:
            specs.remove_service(self.client, self._service(instance.color))
            raise DeployError(
                f"The recreate failed and restarting the version it replaced, v{instance.version}, "
                f"failed too, so nothing serves {d.model}: {e}\nRun `shipyard promote {d.model} "
                f"--version {instance.version}` once the cause is fixed.",
                e.failures,
            ) from e
        d.instances[instance.color] = instance.model_copy(update={"container_id": service_id})
        d.live, d.replaced = instance.color, None
        self._save()
        self._weigh({instance.color: 100})

    # -- operations ----------------------------------------------------------------------

    def scale(self, replicas: int) -> None:
        """The serving version's service to `replicas` tasks, without a rollout; returns once
        they all run and HAProxy routes to them."""
        if not 1 <= replicas <= SLOTS:
            raise DeployError(
                f"Replicas {replicas}: expected 1 to {SLOTS} (the servers HAProxy keeps per slot)."
            )
        d = self.deployment
        service = self._serving_service("scale")
        specs.scale(self.client, service, replicas)
        self.recorded = self.recorded.model_copy(update={"replicas": replicas})
        self.deployment.policy = self.deployment.policy.model_copy(update={"replicas": replicas})
        self._save()
        self._routed(replicas)
        self.say(f"scale: {d.model} v{d.instances[d.live or ''].version}: {replicas} replica(s)")

    def rebalance(self) -> None:
        """The serving version's replicas replaced one at a time, a new one healthy before the
        old one stops, so Swarm places them over the nodes ready now (it moves no running task
        by itself, e.g. onto a node that came back); no rollout, the same image. Returns once
        they all run and HAProxy routes to them."""
        d = self.deployment
        service = self._serving_service("rebalance")
        count = specs.replicas(service)
        specs.restart_tasks(self.client, service)
        # Each task: started, healthy, then watched for Swarm's update monitor (5 s).
        limit = count * (d.policy.ready_seconds + 10)

        def updated() -> bool:
            service.reload()
            state = specs.update_state(service)
            if state in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
                message = (service.attrs.get("UpdateStatus") or {}).get("Message", "")
                raise DeployError(
                    f"{d.model}: Swarm stopped replacing the replicas of {service.name} ({state}: "
                    f"{message}); `shipyard status {d.model}` shows what runs."
                )
            return state == "completed"

        try:
            wait_until(updated, limit, 0.5)
        except TimedOut:
            raise DeployError(
                f"{d.model}: the replicas of {service.name} were not all replaced within "
                f"{limit:.0f} s ({count} × (deploy.ready_seconds + 10 s)). Swarm goes on "
                f"replacing them: wait until `docker service inspect {service.name}` shows "
                f"UpdateStatus completed before another rollout; `shipyard status {d.model}` "
                "shows what runs."
            ) from None
        self._routed(count)
        self.say(f"rebalance: {d.model} v{d.instances[d.live or ''].version}: {count} replica(s)")

    def _serving_service(self, verb: str) -> Service:
        d = self.deployment
        if d.live is None or d.candidate is not None:
            raise DeployError(
                f"{d.model}: nothing serves, or a rollout is under way (candidate "
                f"{d.candidate}); {verb} once `shipyard status {d.model}` shows one version."
            )
        service = specs.find_service(self.client, self._service(d.live))
        if service is None:
            raise DeployError(
                f"{d.model}: the service {self._service(d.live)} is missing: `shipyard stack up` "
                "recovers recorded endpoints."
            )
        return service

    def _routed(self, replicas: int) -> None:
        """Every replica of the serving slot running; HAProxy's checks see them UP (replicas
        leaving are dropped from DNS and fail their checks; new ones come UP)."""
        live = self.deployment.live or ""
        self.wait_replicas(live, replicas, self.deployment.policy.ready_seconds)
        with contextlib.suppress(TimedOut):
            wait_until(lambda: len(self.proxy.up(live)) == replicas, 30, 0.2)

    def describe(self) -> dict[str, Any]:
        """What `shipyard status` shows: per slot its service, replicas running per node, weight,
        and how many replicas HAProxy's checks see UP (the Docker target's keys, plus these)."""
        d = self.deployment
        slots = []
        for color, instance in sorted(d.instances.items()):
            service = specs.find_service(self.client, self._service(color))
            wanted = specs.replicas(service) if service else 0
            placed = specs.per_node(self.client, service) if service else {}
            try:
                up = len(self.proxy.up(color))
            except DeployError:  # the proxy does not answer: `proxy` says so
                up = 0
            nodes = ", ".join(f"{node} {n}" for node, n in placed.items()) or "none"
            slots.append(
                {
                    "color": color,
                    "role": "serving" if color == d.live else "candidate",
                    "version": instance.version,
                    "image": instance.image,
                    "container": self._service(color),
                    "service": self._service(color),
                    "replicas": wanted,
                    "running_per_node": placed,
                    "health": f"{sum(placed.values())}/{wanted} running ({nodes})",
                    "weight": d.weights.get(color, 0),
                    "proxy_up": up,
                    "proxy_check": f"{up} UP",
                }
            )
        return {
            "endpoint": d.url,
            "target": "swarm",
            "proxy": self.proxy.describe(),
            "slots": slots,
        }


def proxy_of(client: docker.DockerClient, settings: Settings, d: Deployment) -> SwarmProxy:
    """The HAProxy service of the deployment's endpoint (not started)."""
    services = {c: specs.service_name(d.model, d.port, c) for c in COLORS}
    network = specs.network_name(d.model, d.port)
    return SwarmProxy(
        settings.deploy_dir / d.model, d.host, d.port, client, services, network, d.policy.tls
    )


def _login(settings: Settings, client: docker.DockerClient) -> None:
    """The engine client carries the registry credentials: each service is created with them,
    so every node can pull its image (`--with-registry-auth`)."""
    login = engine.registry_login(settings)
    client.login(login.username, login.password, registry=login.address)
