"""A model's endpoint on the Docker target, and the rollout moves a flow can undo one by one.

1. `start`: run the new version in the idle slot; gate readiness and golden smoke requests
   directly on the container, before it gets any traffic.
2. `shift`: move traffic through HAProxy's weights: all at once (`recreate`, `blue-green`) or
   in steps (`canary`), each step held while the new container's health and live metrics
   (error rate, p99) are read.
3. `retire`: keep the old version warm for `keep_blue_seconds` while the gates keep watching,
   then drain it and remove it.

`revert` undoes 1 and 2 from the recorded state: traffic back to the old version, the new
container removed. A failed gate reverts before it raises, naming the gate, value and limit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
from docker.errors import DockerException, NotFound
from docker.models.containers import Container

from shipyard import engine, processes
from shipyard.deploy import checks, containers, state
from shipyard.deploy.checks import Golden
from shipyard.deploy.proxy import Proxy, Slot
from shipyard.deploy.state import Deployment, Instance
from shipyard.errors import DeployError
from shipyard.manifest import DeployPolicy, Strategy
from shipyard.settings import Settings
from shipyard.waiting import TimedOut, wait_until

Say = Callable[[str], None]
POLL_S = 0.25


@dataclass(frozen=True)
class Target:
    """What a rollout serves: a registered version's image, pinned by digest."""

    model: str
    version: str
    image: str
    golden: Golden


class Endpoint:
    """One model's stable endpoint: its recorded state, its proxy, and the engine its slots'
    containers run on. Built by `open`; the constructor only holds what it is given."""

    def __init__(
        self,
        settings: Settings,
        deployment: Deployment,
        recorded: DeployPolicy,
        client: docker.DockerClient,
        proxy: Proxy,
        say: Say = lambda _: None,
    ) -> None:
        self.settings, self.deployment, self.recorded = settings, deployment, recorded
        self.client, self.proxy, self.say = client, proxy, say
        self.reverted = False

    @classmethod
    def open(
        cls,
        settings: Settings,
        model: str,
        policy: DeployPolicy | None,
        say: Say = lambda _: None,
        keep: bool = True,
    ) -> Endpoint:
        """The endpoint of `model` as recorded (a new one if none is), its proxy running.

        `policy` (default: the recorded one) governs this rollout, and is recorded unless
        `keep` is False (a one-off override, like rollback's)."""
        client = engine.engine(settings)
        existing = state.load(settings.deploy_dir, model)
        policy = policy or (existing.policy if existing else DeployPolicy())
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
        proxy = Proxy(
            settings.deploy_dir / model, existing.host, existing.port, client, existing.policy.tls
        )
        endpoint = cls(settings, existing, recorded, client, proxy, say)
        proxy.ensure(endpoint._slots(), say)
        return endpoint

    # -- state ---------------------------------------------------------------------------

    def _slots(self) -> dict[str, Slot]:
        d = self.deployment
        return {
            color: Slot(color, d.host, i.port, d.weights.get(color, 0), True)
            for color, i in d.instances.items()
        }

    def _save(self) -> None:
        d = self.deployment
        if d.candidate is None and d.replaced is None:
            d.rollout_by = None  # no rollout under way
        state.save(
            self.settings.deploy_dir, self.deployment.model_copy(update={"policy": self.recorded})
        )
        self.proxy.ensure(self._slots(), self.say)  # the config a restarted proxy reads

    def _weigh(self, weights: dict[str, int]) -> None:
        self.proxy.weigh(weights)
        self.deployment.weights.update(weights)
        self._save()

    def _url(self, color: str) -> str:
        return f"http://{self.deployment.host}:{self.deployment.instances[color].port}"

    @property
    def _api_key(self) -> str | None:
        key = self.settings.serve_api_key
        return key.get_secret_value() if key else None

    def _environment(self) -> dict[str, str]:
        """The serving container's environment: never a key (`_keys_file` holds them)."""
        workers = self.settings.serve_workers or containers.workers(
            self.deployment.policy.resources
        )
        return {"SHIPYARD_SERVE_WORKERS": str(workers)}

    def _keys_file(self) -> Path | None:
        """The configured API keys (comma-separated, as the server reads them), written to the
        endpoint's directory for a read-only bind mount; None when no key is configured."""
        keys = [k.strip() for k in (self._api_key or "").split(",") if k.strip()]
        if not keys:
            return None
        return containers.write_keys(keys_dir(self.settings, self.deployment.model), keys)

    def run_slot(self, image: str, version: str, color: str) -> tuple[Container, int]:
        """Start `image` (by digest) in slot `color` of this endpoint, locked down and limited
        to the policy's `deploy.resources`; its container and port."""
        d = self.deployment
        return containers.run(
            self.client,
            image,
            model=d.model,
            version=version,
            color=color,
            host=d.host,
            endpoint_port=d.port,
            environment=self._environment(),
            resources=d.policy.resources,
            keys_file=self._keys_file(),
        )

    def deploy(self, target: Target, strategy: Strategy) -> str:
        """`start` then `shift`; any failure (a gate, the engine, the proxy, an interruption)
        reverts before it propagates. Returns the new version's slot color."""
        if self.deployment.live is None and strategy != "recreate":
            self.say(f"deploy: nothing serves {target.model} yet: a first deploy is a recreate")
        try:
            color = self.start(target, strategy)
            self.shift(strategy)
        except BaseException as e:
            if not self.reverted:  # errors that are not gates (engine, proxy) revert here
                if isinstance(e, Exception):
                    self.revert_after(e)
                else:
                    self.revert()  # interrupted: undo, and let the interruption through
            raise
        return color

    # -- 1. start ------------------------------------------------------------------------

    def start(self, target: Target, strategy: Strategy) -> str:
        """Run `target` in the idle slot and gate it; return that slot's color."""
        d = self.deployment
        color = self._begin(strategy)
        try:
            container, port = self.run_slot(target.image, target.version, color)
        except DeployError as e:
            self.revert_after(e)  # a recreate already stopped the old version: bring it back
            raise
        d.instances[color] = Instance(
            color=color,
            version=target.version,
            image=target.image,
            container_id=str(container.id),
            port=port,
        )
        d.candidate = color
        d.weights[color] = 0
        self._save()  # recorded before any gate, so a revert finds it
        self.say(f"deploy: started v{target.version} as {color} on port {port}")
        try:
            containers.wait_ready(container, self._url(color), d.policy.ready_seconds)
            failures = checks.smoke(self._url(color), target.golden, self._api_key)
            if failures:
                raise DeployError(failures[0], failures)
            self.proxy.point(color, d.host, port)
            self.proxy.wait_up(color, timeout_s=10)
        except DeployError as e:
            raise self._gate_failed(e, color) from e
        self.say(f"deploy: {color} v{target.version} is ready and answers the golden inputs")
        return color

    def _begin(self, strategy: Strategy) -> str:
        """Before a new slot starts: revert an interrupted rollout, record who rolls out, and on
        a recreate remove the live slot first; returns the idle slot's color."""
        d = self.deployment
        if d.candidate is not None or d.replaced is not None:
            self.say(f"deploy: reverting an interrupted rollout of {d.candidate} first")
            self.revert()
        me = processes.identify(os.getpid())
        d.rollout_by = me.to_json() if me else None
        if strategy == "recreate" and d.live is not None:
            self.say(f"deploy: recreate: removing v{d.instances[d.live].version} first")
            d.replaced = d.instances[d.live]
            self._remove(d.live)
            d.live = None
            self._save()
        return d.idle_color()

    def _gate_failed(self, e: DeployError, color: str) -> DeployError:
        """Revert after a failed start gate; the error says where traffic stays."""
        d = self.deployment
        self.revert_after(e)
        return DeployError(
            f"{e} — traffic stays on "
            + (f"v{d.instances[d.live].version}" if d.live else "nothing (first deploy)")
            + f"; {color} was removed.",
            e.failures,
        )

    # -- 2. shift ------------------------------------------------------------------------

    def shift(self, strategy: Strategy) -> None:
        """Move traffic to the candidate, gated; revert and raise on a failed gate."""
        d = self.deployment
        new = d.candidate
        assert new is not None, "start() first"
        old = d.live
        if old is None or strategy != "canary":
            self._weigh({new: 100, **({old: 0} if old else {})})
            self.say(f"deploy: {new} takes all traffic ({strategy if old else 'first deploy'})")
            return
        for step in d.policy.canary_steps:
            self._weigh({new: step, old: 100 - step})
            self.say(f"deploy: canary {step}% on {new}, holding {d.policy.step_seconds:g} s")
            failures = self.watch(d.policy.step_seconds)
            if failures:
                error = DeployError(failures[0], failures)
                self.revert_after(error)
                raise DeployError(
                    f"{failures[0]} — at canary step {step}%; traffic is back on "
                    f"v{d.instances[old].version}, {new} was removed.",
                    failures,
                )

    def watch(self, seconds: float) -> list[str]:
        """Read the candidate's health and live metrics for `seconds` (at least once)."""
        d = self.deployment
        assert d.candidate is not None
        instance, url = d.instances[d.candidate], self._url(d.candidate)
        try:
            baseline = checks.scrape(url)
        except httpx.HTTPError as e:
            return [f"Gate 'metrics' failed: {url}/metrics did not answer ({e})"]
        deadline = time.monotonic() + seconds
        while True:
            if not containers.running(self.client, instance.container_id):
                return [f"Gate 'running' failed: {d.candidate} v{instance.version} has stopped"]
            try:
                ready = httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
                current = checks.scrape(url)
            except httpx.HTTPError:
                ready = False
            if not ready:
                # A killed container stops answering before the engine reports it stopped: ask
                # the engine again for a moment, so a crash is named as one.
                with contextlib.suppress(TimedOut):
                    wait_until(
                        lambda: not containers.running(self.client, instance.container_id), 1, 0.1
                    )
                    return [f"Gate 'running' failed: {d.candidate} v{instance.version} has stopped"]
                return [f"Gate 'readiness' failed: {d.candidate} v{instance.version} is not ready"]
            failures = checks.judge(checks.window(baseline, current), d.policy)
            if failures or time.monotonic() >= deadline:
                return failures
            time.sleep(POLL_S)

    # -- 3. retire -----------------------------------------------------------------------

    def retire(self) -> None:
        """Keep the old version warm while the gates watch; then remove it."""
        d = self.deployment
        new, old = d.candidate, d.live
        assert new is not None
        if old is not None:
            seconds = d.policy.keep_blue_seconds
            self.say(f"deploy: keeping {old} warm for {seconds:g} s while {new} is watched")
            failures = self.watch(seconds)
            if failures:
                raise DeployError(
                    f"{failures[0]} — while v{d.instances[old].version} was kept warm after the "
                    f"switch; traffic goes back to it and {new} is removed.",
                    failures,
                )
            retiring = d.instances.pop(old)
            d.weights.pop(old, None)
        d.live, d.candidate, d.replaced = new, None, None
        self._save()  # the switch is recorded before the old slot goes: a revert never picks it
        if old is not None:
            try:
                self.proxy.drain(old)
                self._discard(old, retiring)
            except (DeployError, DockerException) as e:
                # The new version serves and is recorded as such: a failed cleanup must not
                # undo that. The old slot stays on record (weight 0), so the next rollout (which
                # reuses the slot) or `shipyard undeploy` removes it.
                d.instances[old], d.weights[old] = retiring, 0
                self._save()
                self.say(
                    f"deploy: warning: {old} v{retiring.version} could not be removed ({e}); the "
                    f"next rollout or `shipyard undeploy {d.model}` removes it"
                )
                return
            self.say(f"deploy: drained and removed {old} v{retiring.version}")

    def _remove(self, color: str) -> None:
        d = self.deployment
        if color in d.instances:
            self.proxy.drain(color)
            self._discard(color, d.instances.pop(color))
        d.weights.pop(color, None)

    def _discard(self, color: str, instance: Instance) -> None:
        """Stop and remove what runs a drained slot (here its container)."""
        containers.remove(self.client, instance.container_id)

    # -- undo ----------------------------------------------------------------------------

    def revert_after(self, error: Exception) -> None:
        """Revert after `error`; a revert that fails too is raised with both messages."""
        try:
            self.revert()
        except Exception as undo:
            raise DeployError(
                f"{error}\nThe revert failed too: {undo}\n`shipyard status "
                f"{self.deployment.model}` shows what runs.",
                getattr(error, "failures", []),
            ) from error

    def revert(self) -> None:
        """Traffic back to the version that served before the rollout; the new one removed."""
        self.reverted = True  # attempted: a caller does not try it a second time
        d = self.deployment
        new, old = d.candidate, d.live
        if new is None and d.replaced is None:
            return
        if new is not None:
            weights = {old: 100} if old is not None else {}
            try:
                self.proxy.weigh(weights)
                self.proxy.drain(new)
            except DeployError as e:
                if self.proxy.pid() is not None:
                    raise  # a running proxy that refused still routes to the new version: keep it
                # No proxy runs: `_save` below starts one from the config, routing as recorded.
                self.say(f"deploy: warning: the proxy did not take the revert ({e})")
            d.weights.update(weights)
            d.weights.pop(new, None)
            containers.remove(self.client, d.instances.pop(new).container_id)
            d.candidate = None
            self._save()
        if d.replaced is not None:  # recreate stopped the old version: bring it back
            self._restore(d.replaced)
            old = d.live
        self.say(
            f"deploy: reverted: {f'{old} v{d.instances[old].version} serves' if old else 'nothing serves'}"
        )

    def _restore(self, instance: Instance) -> None:
        """Start again what a recreate stopped; recorded as serving only once it is ready."""
        d = self.deployment
        container, port = self.run_slot(instance.image, instance.version, instance.color)
        url = f"http://{d.host}:{port}"
        try:
            containers.wait_ready(container, url, d.policy.ready_seconds)
            self.proxy.point(instance.color, d.host, port)
        except DeployError as e:
            containers.remove(self.client, str(container.id))
            raise DeployError(
                f"The recreate failed and restarting the version it replaced, v{instance.version}, "
                f"failed too, so nothing serves {d.model}: {e}\nRun `shipyard promote {d.model} "
                f"--version {instance.version}` once the cause is fixed.",
                e.failures,
            ) from e
        d.instances[instance.color] = instance.model_copy(
            update={"container_id": str(container.id), "port": port}
        )
        d.live, d.replaced = instance.color, None
        self._save()  # recorded before the weight moves: `undeploy` finds it whatever happens
        self._weigh({instance.color: 100})


def recover(settings: Settings, model: str, say: Say = lambda _: None) -> str:
    """After a restart (of the engine, the machine, or a killed rollout): the endpoint serves
    what its state records, and a rollout that was cut off is undone. Returns what it did.

    The engine's restart policy brings the proxy and the slots' containers back by themselves;
    this starts what it did not (a container stopped by hand, or removed with the engine's
    data: run again from its recorded image, by digest) and undoes a half-done rollout whose
    process is gone, so the endpoint is never left half-switched."""
    recorded = state.load(settings.deploy_dir, model)
    if recorded is None:
        return "not deployed"
    endpoint = Endpoint.open(settings, model, None, say)
    d = endpoint.deployment
    done = []
    if d.candidate is not None or d.replaced is not None:
        owner = processes.Started.from_json(d.rollout_by)
        cut = (
            d.instances[d.candidate].version
            if d.candidate in d.instances
            else d.replaced.version
            if d.replaced
            else "?"
        )
        if owner is not None and owner.alive():
            return f"a rollout is under way (pid {owner.pid}): left to it"
        endpoint.revert()
        done.append(f"the rollout of v{cut} was cut off: undone")
    for color, instance in sorted(d.instances.items()):
        try:
            container = endpoint.client.containers.get(instance.container_id)
        except NotFound:
            container = None
        if container is not None and container.status in ("running", "restarting"):
            # The engine brought it back: recorded as serving once it answers again.
            containers.wait_ready(container, endpoint._url(color), d.policy.ready_seconds)
            endpoint.proxy.wait_up(color, timeout_s=10)
            continue
        if container is not None:
            container.start()
            port = instance.port
            done.append(f"{color} v{instance.version} started again")
        else:
            container, port = endpoint.run_slot(instance.image, instance.version, color)
            d.instances[color] = instance.model_copy(
                update={"container_id": str(container.id), "port": port}
            )
            done.append(f"{color} v{instance.version} run again from {instance.image}")
        containers.wait_ready(container, f"http://{d.host}:{port}", d.policy.ready_seconds)
        endpoint.proxy.point(color, d.host, port)
        endpoint._weigh({color: d.weights.get(color, 0)})
        endpoint.proxy.wait_up(color, timeout_s=10)  # "serves" once HAProxy routes to it
    live = d.serving()
    serves = f"v{live.version} serves {d.url}" if live else f"nothing serves {d.url}"
    return "; ".join([serves, *done])


def keys_dir(settings: Settings, model: str) -> Path:
    """Where the API keys file of `model`'s serving containers is written (mode 0700): outside
    the endpoint's directory, which the proxy's container mounts."""
    return settings.deploy_dir / ".secrets" / model


def serving(settings: Settings, model: str) -> Instance | None:
    """The instance that serves `model` now, if any."""
    deployment = state.load(settings.deploy_dir, model)
    return deployment.serving() if deployment else None


def undeploy(settings: Settings, model: str, say: Say = lambda _: None) -> bool:
    """Drain and remove every container of the endpoint, stop its proxy, forget its state.

    Returns whether anything was deployed.
    """
    deployment = state.load(settings.deploy_dir, model)
    if deployment is None:
        return False
    client = engine.engine(settings)
    proxy = Proxy(settings.deploy_dir / model, deployment.host, deployment.port, client)
    for color, instance in deployment.instances.items():
        if proxy.pid() is not None:
            with contextlib.suppress(DeployError):  # a proxy that does not answer: remove anyway
                proxy.drain(color)
        containers.remove(client, instance.container_id)
        say(f"removed {color} v{instance.version}")
    proxy.stop()
    shutil.rmtree(keys_dir(settings, model), ignore_errors=True)  # no key left behind
    state.path(settings.deploy_dir, model).unlink()
    say(f"stopped the endpoint {deployment.url}")
    return True
