"""The Swarm target's pure parts: the manifest's `deploy.target`/`replicas`, HAProxy's config of
a Swarm endpoint, and the per-server weights that give each slot its share of the traffic."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shipyard.deploy.proxy import listening
from shipyard.deploy.swarm_proxy import (
    SLOTS,
    is_local,
    render,
    render_front,
    split,
    weigh_commands,
)
from shipyard.errors import ManifestError
from shipyard.manifest import DeployPolicy, parse_manifest
from tests.support.projects import EXAMPLES

pytestmark = pytest.mark.unit

SERVICES = {"blue": "shipyard-m-8000-blue", "green": "shipyard-m-8000-green"}


def manifest_with(deploy: dict[str, object]) -> dict[str, object]:
    import yaml

    data = yaml.safe_load((EXAMPLES / "digits-sklearn" / "shipyard.yaml").read_text())
    return {**data, "deploy": deploy}


def test_the_docker_target_stays_the_default_with_one_replica() -> None:
    policy = DeployPolicy()
    assert (policy.target, policy.replicas) == ("docker", 1)
    assert parse_manifest(manifest_with({"target": "swarm", "replicas": 3})).deploy.replicas == 3


@pytest.mark.parametrize(
    ("deploy", "named"),
    [
        ({"replicas": 3}, "deploy: Value error, replicas 3 needs target: swarm"),
        ({"target": "swarm", "replicas": 0}, "deploy.replicas: Input should be greater than"),
        ({"target": "swarm", "replicas": SLOTS + 1}, "deploy.replicas: Input should be less"),
        ({"target": "kubernetes"}, "deploy.target: Input should be 'docker' or 'swarm'"),
    ],
)
def test_a_bad_target_or_replica_count_is_named_with_the_fix(
    deploy: dict[str, object], named: str
) -> None:
    with pytest.raises(ManifestError) as error:
        parse_manifest(manifest_with(deploy))
    assert named in str(error.value)


def test_the_config_finds_each_slots_replicas_through_swarm_dns(tmp_path: Path) -> None:
    gates = {c: tmp_path / f"gate-{c}.sock" for c in SERVICES}
    config = render(8000, SERVICES, {"blue": 100}, tmp_path / "haproxy.sock", gates)
    assert "nameserver swarm 127.0.0.11:53" in config
    assert "    bind :8000" in config
    main = config.split("\nbackend model\n")[1].split("frontend gate-blue")[0]
    assert f"server-template blue 1-{SLOTS} tasks.shipyard-m-8000-blue:8080 weight 100" in main
    assert f"server-template green 1-{SLOTS} tasks.shipyard-m-8000-green:8080 weight 0" in main
    assert f"bind unix@{gates['green']} mode 600" in config
    assert "use-server green3 if { req.hdr(X-Shipyard-Server) -m str green3 }" in config


def test_a_local_endpoint_listens_on_its_unix_socket_behind_a_front_that_binds_its_address(
    tmp_path: Path,
) -> None:
    gates = {c: tmp_path / f"gate-{c}.sock" for c in SERVICES}
    front = tmp_path / "endpoint.sock"
    config = render(8000, SERVICES, {"blue": 100}, tmp_path / "haproxy.sock", gates, None, front)
    endpoint = config.split("frontend endpoint\n")[1].split("\n\n")[0]
    assert f"    bind unix@{front} mode 600 accept-proxy" in endpoint
    assert "bind :8000" not in config  # nothing on the network: the front is the way in
    tls = render(8000, SERVICES, {}, tmp_path / "h.sock", gates, tmp_path / "e.pem", front)
    assert f"bind unix@{front} mode 600 accept-proxy ssl crt {tmp_path / 'e.pem'}" in tls

    passed = render_front("127.0.0.1:8000", front)
    assert "    mode tcp" in passed and "    bind 127.0.0.1:8000" in passed
    assert f"    server endpoint unix@{front} send-proxy-v2" in passed


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.7", False),
        ("serving.example", False),
    ],
)
def test_every_loopback_deploy_host_means_this_machine_only(host: str, local: bool) -> None:
    assert is_local(host) is local


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_the_port_probe_sees_a_listener_on_ipv4_and_ipv6(family: int, host: str) -> None:
    with socket.socket(family) as server:
        server.bind((host, 0))
        port = server.getsockname()[1]
        assert not listening(host, port)
        server.listen()
        assert listening(host, port)


@pytest.mark.parametrize(
    ("weights", "replicas", "expected"),
    [
        ({"blue": 100}, {"blue": 3}, {"blue": 100}),
        ({"blue": 100, "green": 0}, {"blue": 3, "green": 3}, {"blue": 100, "green": 0}),
        ({"blue": 50, "green": 50}, {"blue": 1, "green": 4}, {"blue": 256, "green": 64}),
        ({"blue": 90, "green": 10}, {"blue": 3, "green": 3}, {"blue": 256, "green": 28}),
    ],
)
def test_each_slot_gets_its_share_whatever_its_replica_count(
    weights: dict[str, int], replicas: dict[str, int], expected: dict[str, int]
) -> None:
    per_server = split(weights, replicas)
    assert per_server == expected
    if len([w for w in weights.values() if w]) == 2:
        total = sum(per_server[c] * replicas[c] for c in weights)
        for color, share in weights.items():
            assert abs(100 * per_server[color] * replicas[color] / total - share) < 1.5


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # blue-green: the endpoint's recorded order puts the old slot first
        ({"blue": 100, "green": 0}, {"blue": 0, "green": 100}),
        ({"green": 90, "blue": 10}, {"green": 0, "blue": 100}),  # the last canary step
    ],
)
def test_moving_traffic_never_leaves_every_server_at_weight_zero(
    before: dict[str, int], after: dict[str, int]
) -> None:
    """HAProxy answers 503 while every server weighs 0: the switch (applied command by command,
    as HAProxy runs a line of them) must raise the new slot before it lowers the old one."""
    replicas = {"blue": 3, "green": 3}
    weight = {
        f"{color}{i}": w
        for color, w in split(before, replicas).items()
        for i in range(1, SLOTS + 1)
    }
    assert any(weight.values())
    for command in weigh_commands(split(after, replicas)):
        server, value = command.removeprefix("set server model/").split(" weight ")
        weight[server] = int(value)
        assert any(weight.values()), f"every server weighs 0 after {command!r}"
    assert {s.rstrip("0123456789") for s, w in weight.items() if w} == {
        c for c, w in after.items() if w
    }
