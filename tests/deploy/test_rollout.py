"""Rollouts on the real engine behind a real HAProxy: under load, and when they must fail.

Every test starts with one version serving on the shared endpoint (`Endpoint.settle`), asks
for what else it needs (`Endpoint.previous()`), and leaves one version serving: any test runs
alone or in any order.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect.concurrency.sync import concurrency

from shipyard import audit, engine, registry
from shipyard.contracts import RolloutResult
from shipyard.deploy.endpoint import Target
from shipyard.errors import DeployError, RegistryError, Superseded
from shipyard.flows.rollback import rollback
from shipyard.flows.rollout import rollout, rollout_lock, target_of_version
from shipyard.manifest import DeployPolicy
from tests.support.endpoints import (
    MODEL,
    Endpoint,
    derived_image,
    served_version,
    serving_containers,
    steady_load,
)
from tests.support.k8s import validate_core

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]


def champion_target(endpoint: Endpoint) -> Target:
    mlflow = registry.client(endpoint.settings)
    champion = registry.version_by_alias(mlflow, MODEL, registry.CHAMPION)
    assert champion is not None
    return target_of_version(endpoint.settings, MODEL, champion)


def previous_target(endpoint: Endpoint) -> Target:
    """The `previous` version's target, released first when there is none."""
    number = endpoint.previous()
    mlflow = registry.client(endpoint.settings)
    return target_of_version(endpoint.settings, MODEL, mlflow.get_model_version(MODEL, number))


def assert_still_serving(endpoint: Endpoint, version: str, aliases: dict[str, str]) -> None:
    """Traffic on `version` alone, nothing else running, the aliases as they were."""
    deployment = endpoint.deployment()
    assert deployment.candidate is None
    assert deployment.weights == {deployment.live: 100}
    assert serving_containers(endpoint.settings) == [version]
    assert served_version(endpoint.url) == version
    assert endpoint.aliases() == aliases


def test_a_first_release_is_deployed_and_becomes_champion(endpoint: Endpoint) -> None:
    first = endpoint.first
    assert first.status == "deployed" and first.previous_version is None
    assert first.endpoint == endpoint.url
    assert endpoint.first_aliases == {
        "candidate": first.deployed_version,
        "champion": first.deployed_version,
    }
    aliases = endpoint.aliases()  # what serves now, after whichever tests ran before
    assert_still_serving(endpoint, aliases["champion"], aliases)
    status = json.loads(endpoint.cli("status", MODEL, "--json").stdout)
    [slot] = status["deployment"]["slots"]
    assert status["deployment"]["endpoint"] == endpoint.url
    assert slot["version"] == aliases["champion"] and slot["weight"] == 100
    assert slot["health"].startswith("running") and slot["proxy_check"] == "UP"
    assert slot["image"].endswith(status["aliases"]["champion"]["tags"]["image_digest"])


def test_blue_green_canary_and_rollback_under_steady_load_fail_no_request(
    endpoint: Endpoint,
) -> None:
    first = endpoint.aliases()["champion"]
    with steady_load(endpoint.url) as blue_green:
        second = endpoint.release(strategy="blue-green")
    assert second.deployed_version != first and second.previous_version == first
    with steady_load(endpoint.url) as canary:
        third = endpoint.release(strategy="canary")
    with steady_load(endpoint.url) as back:
        rolled = rollback(MODEL, settings=endpoint.settings)

    v2, v3 = second.deployed_version, third.deployed_version
    for counts, before, after in ((blue_green, first, v2), (canary, v2, v3), (back, v3, v2)):
        assert counts["sent"] > 100 and counts["failed"] == 0, counts
        assert counts["versions"].get(before, 0) > 0 and counts["versions"].get(after, 0) > 0
    assert rolled.deployed_version == v2 and rolled.rolled_back_to == v2
    aliases = endpoint.aliases()
    assert (aliases["champion"], aliases["previous"]) == (v2, v3)
    assert_still_serving(endpoint, v2, aliases)


def test_the_rollback_command_serves_previous_again_and_swaps_the_aliases(
    endpoint: Endpoint,
) -> None:
    previous = endpoint.previous()
    champion = endpoint.aliases()["champion"]
    done = endpoint.cli("rollback", MODEL, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {
        "model": MODEL,
        "endpoint": endpoint.url,
        "deployed_version": previous,
        "previous_version": champion,
        "strategy": "blue-green",
        "rolled_back_to": previous,
    }
    assert f"{MODEL}: v{previous} serves on {endpoint.url} (previous: v{champion})" in done.stderr
    aliases = endpoint.aliases()
    assert (aliases["champion"], aliases["previous"]) == (previous, champion)
    assert_still_serving(endpoint, previous, aliases)  # what /v2/models/digits-sklearn names
    # The audit trail: who rolled back what to what, and the command that prints it.
    entry = audit.read(endpoint.settings, MODEL)[-1]
    assert entry["action"] == "rollback" and entry["outcome"] == "succeeded"
    assert (entry["champion_before"], entry["champion_after"]) == (champion, previous)
    assert entry["digest"] == endpoint.deployment().serving().image  # type: ignore[union-attr]
    shown = endpoint.cli("audit", MODEL).stdout.splitlines()[-1]
    assert f"rollback         {MODEL} v{previous} champion v{champion} → v{previous}" in shown
    assert shown.endswith(": succeeded")
    refused = endpoint.cli("promote", MODEL, "--version", "999")
    assert refused.returncode != 0
    entry = audit.read(endpoint.settings, MODEL)[-1]
    assert entry["action"] == "promote" and entry["outcome"].startswith("failed: ")
    assert "no version '999'" in entry["outcome"]


def test_a_version_that_never_gets_ready_leaves_blue_serving(endpoint: Endpoint) -> None:
    aliases = endpoint.aliases()
    good = champion_target(endpoint)
    broken = derived_image(endpoint.settings, good.image, b"not an onnx model", "broken")
    with pytest.raises(
        DeployError,
        match=r"Gate 'readiness' failed: .* crashed before it was ready \(\d restart",
    ):
        rollout(Target(MODEL, "91", broken, good.golden), "blue-green", None, endpoint.settings)
    assert_still_serving(endpoint, good.version, aliases)


def test_a_failed_recreate_restarts_the_version_it_stopped(endpoint: Endpoint) -> None:
    aliases = endpoint.aliases()
    good = champion_target(endpoint)
    broken = derived_image(endpoint.settings, good.image, b"not an onnx model", "broken-recreate")
    with pytest.raises(DeployError, match=r"Gate 'readiness' failed: .* crashed before it was"):
        rollout(Target(MODEL, "93", broken, good.golden), "recreate", None, endpoint.settings)
    assert endpoint.deployment().replaced is None
    assert_still_serving(endpoint, good.version, aliases)


def test_a_version_answering_unlike_its_golden_outputs_leaves_blue_serving(
    endpoint: Endpoint,
) -> None:
    aliases = endpoint.aliases()
    good = champion_target(endpoint)
    fp32 = next(Path(endpoint.settings.builds_dir).glob("*/onnx/fp32.onnx")).read_bytes()
    other = derived_image(endpoint.settings, good.image, fp32, "other-model")
    with pytest.raises(DeployError, match=r"Gate 'smoke' failed: \d+ of 64 golden labels differ"):
        rollout(Target(MODEL, "92", other, good.golden), "canary", None, endpoint.settings)
    assert_still_serving(endpoint, good.version, aliases)


def test_killing_green_mid_canary_returns_traffic_to_blue(endpoint: Endpoint) -> None:
    target = previous_target(endpoint)
    aliases = endpoint.aliases()
    serving = aliases["champion"]
    policy = endpoint.deployment().policy.model_copy(
        update={"canary_steps": [50, 100], "step_seconds": 60}
    )
    raised: list[BaseException] = []

    def deploy() -> None:
        try:
            rollout(target, "canary", policy, endpoint.settings)
        except BaseException as e:
            raised.append(e)

    with steady_load(endpoint.url) as counts:
        thread = threading.Thread(target=deploy)
        thread.start()
        deadline = time.monotonic() + 60
        while not (d := endpoint.deployment()).candidate or not d.weights.get(d.candidate):
            assert time.monotonic() < deadline, "the canary never took traffic"
            time.sleep(0.1)
        time.sleep(1)  # the canary serves for a while
        green = d.instances[d.candidate].container_id
        engine.engine(endpoint.settings).containers.get(green).kill()
        thread.join(timeout=60)
    assert counts["versions"].get(target.version, 0) > 0  # the canary did serve
    # Only a response cut mid-flight may fail: at most 0.1 % of the requests (README).
    assert counts["sent"] > 500 and counts["failed"] * 1000 <= counts["sent"], counts
    assert len(raised) == 1 and isinstance(raised[0], DeployError), raised
    assert str(raised[0]).startswith(f"Gate 'running' failed: {d.candidate} v{target.version}")
    assert "at canary step 50%; traffic is back on" in str(raised[0])
    assert_still_serving(endpoint, serving, aliases)


def test_a_failure_after_traffic_moved_puts_traffic_back(endpoint: Endpoint) -> None:
    """The deploy moved all traffic to green; MLflow then refuses the alias (no such version):
    the transaction's rollback hooks put traffic back on blue and remove green."""
    aliases = endpoint.aliases()
    good = champion_target(endpoint)
    unregistered = Target(MODEL, "999", good.image, good.golden)
    with pytest.raises(RegistryError, match="refused to move 'champion' to digits-sklearn v999"):
        rollout(unregistered, "blue-green", None, endpoint.settings)
    assert_still_serving(endpoint, good.version, aliases)


def test_the_p99_gate_reads_the_new_containers_own_metrics(endpoint: Endpoint) -> None:
    target = previous_target(endpoint)
    aliases = endpoint.aliases()
    strict = DeployPolicy(
        port=endpoint.deployment().port, canary_steps=[20, 100], step_seconds=3, max_p99_ms=0.1
    )
    with (
        steady_load(endpoint.url) as counts,
        pytest.raises(DeployError, match=r"Gate 'p99_latency' failed: [\d.]+ ms > limit 0.1 ms"),
    ):
        rollout(target, "canary", strict, endpoint.settings)
    assert counts["failed"] == 0, counts
    assert_still_serving(endpoint, aliases["champion"], aliases)


def test_deploys_of_one_model_wait_for_each_other(endpoint: Endpoint) -> None:
    target = previous_target(endpoint)
    aliases = endpoint.aliases()
    finished: list[RolloutResult] = []
    with concurrency(rollout_lock(MODEL), occupy=1, strict=True):  # another deploy holds it
        thread = threading.Thread(
            target=lambda: finished.append(rollout(target, "blue-green", None, endpoint.settings))
        )
        thread.start()
        time.sleep(4)
        assert thread.is_alive() and endpoint.deployment().candidate is None
        assert serving_containers(endpoint.settings) == [aliases["champion"]]
    thread.join(timeout=120)
    assert finished and finished[0].deployed_version == target.version
    assert endpoint.aliases()["champion"] == target.version


def test_a_redeploy_expecting_another_champion_is_skipped(endpoint: Endpoint) -> None:
    """What a nightly rebuild meets when a release crowned a newer version meanwhile."""
    aliases = endpoint.aliases()
    serving = champion_target(endpoint)
    before = endpoint.deployment().instances
    with pytest.raises(Superseded, match=rf"champion is v{aliases['champion']}, no longer v999"):
        rollout(serving, "blue-green", None, endpoint.settings, expect_champion="999")
    assert endpoint.deployment().instances == before
    assert_still_serving(endpoint, serving.version, aliases)


def test_logs_show_the_serving_containers_lines(endpoint: Endpoint) -> None:
    done = endpoint.cli("logs", MODEL, "--tail", "5")
    assert done.returncode == 0, done.stderr
    version = endpoint.aliases()["champion"]
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith(("[blue v", "[green v")) for line in lines)
    assert all(f" v{version}] " in line for line in lines)


def test_render_k8s_pins_the_registered_images_of_champion_and_canary(endpoint: Endpoint) -> None:
    endpoint.previous()
    done = endpoint.cli(
        "render", "k8s", MODEL, "--canary", "previous", "--weight", "25",
        "--registry", "registry.example:443",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    objects = list(yaml.safe_load_all(done.stdout))
    validate_core(objects)
    mlflow = registry.client(endpoint.settings)
    images = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["image"]
        for o in objects
        if o["kind"] == "Deployment"
    }
    for name, alias in ((MODEL, "champion"), (f"{MODEL}-canary", "previous")):
        version = registry.version_by_alias(mlflow, MODEL, alias)
        assert version is not None
        expected = f"registry.example:443/shipyard/{MODEL}@{version.tags['image_digest']}"
        assert images[name] == expected
