"""The Swarm target, as an operator uses it: a swarm of two nodes on this machine (the engine
and one node container), a model served by 3 replicas spread over them, rollouts and scaling
under a steady load, through the endpoint's HAProxy service."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from docker.errors import NotFound

from shipyard import engine, registry
from shipyard.deploy import state
from shipyard.deploy import swarm_specs as specs
from shipyard.deploy.containers import LABEL
from shipyard.deploy.endpoint import Target
from shipyard.deploy.proxy import PROXY_IMAGE
from shipyard.deploy.swarm_endpoint import SwarmEndpoint
from shipyard.deploy.swarm_proxy import FRONT_ROLE
from shipyard.deploy.targets import undeploy
from shipyard.errors import DeployError
from shipyard.flows.rollout import rollout, target_of_version
from shipyard.image.build import free_port
from shipyard.manifest import DeployPolicy, Tls
from shipyard.settings import Settings
from shipyard.stack import nodes
from shipyard.stack.certs import ensure_dev_certs
from shipyard.waiting import wait_until
from tests.support.endpoints import (
    MODEL,
    Endpoint,
    cli,
    register_copy,
    serving_containers,
    steady_load,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]

NAME = "digits-swarm"
TLS_NAME = "digits-swarm-tls"
PREFIX = "shipyard-test-node"
BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


@pytest.fixture(scope="module")
def swarm(docker_stack: dict[str, str]) -> Iterator[list[nodes.Node]]:
    """This engine as a manager and one node container, joined; removed afterwards, and the
    engine left in (or out of) swarm mode as it was."""
    settings = Settings()
    client = engine.engine(settings)
    before = client.info()["Swarm"]["LocalNodeState"]
    networks = {n.name for n in client.networks.list()}
    found = nodes.up(settings, 2, docker_stack["base_image"], print, prefix=PREFIX)
    yield found
    # A front left behind (a first deploy that failed is not undeployed) goes with the swarm.
    fronts = {"label": f"{LABEL}.role={FRONT_ROLE}"}
    left = client.containers.run(
        PROXY_IMAGE, ["sleep", "600"], detach=True, labels={f"{LABEL}.role": FRONT_ROLE}
    )
    nodes.down(settings, print, prefix=PREFIX)
    assert client.info()["Swarm"]["LocalNodeState"] == before
    gone = not client.containers.list(all=True, filters=fronts)
    with contextlib.suppress(NotFound):
        left.remove(force=True)
    if before != "active":  # nodes.down left the swarm it made
        assert gone, f"{left.name}, a front HAProxy, outlived the swarm"
    if before != "active":
        swarms = {"ingress", "docker_gwbridge"} - networks
        assert not swarms & {n.name for n in client.networks.list()}  # swarm's networks gone


@dataclass
class Served:
    settings: Settings
    url: str
    targets: dict[str, Target]
    """`first` and `second`: two versions of the copied model, with different images."""
    policy: DeployPolicy

    def deployment(self) -> state.Deployment:
        deployed = state.load(self.settings.deploy_dir, NAME)
        assert deployed is not None
        return deployed

    def per_node(self) -> dict[str, int]:
        d = self.deployment()
        assert d.live is not None
        client = engine.engine(self.settings)
        service = client.services.get(specs.service_name(NAME, d.port, d.live))
        return specs.per_node(client, service)


@pytest.fixture(scope="module")
def served(_deployed: Endpoint, swarm: list[nodes.Node]) -> Iterator[Served]:
    """`digits-swarm` (copies of digits-sklearn's champion and previous versions) deployed on
    the swarm with 3 replicas; undeployed afterwards."""
    settings = _deployed.settings
    _deployed.previous()
    mlflow = registry.client(settings)
    targets = {}
    for label, alias in (("first", "champion"), ("second", "previous")):
        version = register_copy(settings, MODEL, NAME, alias)
        targets[label] = target_of_version(settings, NAME, mlflow.get_model_version(NAME, version))
    policy = DeployPolicy(
        target="swarm",
        replicas=3,
        port=free_port("127.0.0.1"),
        keep_blue_seconds=1,
        step_seconds=1.5,
        ready_seconds=90,
    )
    url = rollout(targets["first"], "blue-green", policy, settings, record_policy=True).endpoint
    yield Served(settings, url, targets, policy)
    undeploy(settings, NAME)


def test_three_replicas_on_two_nodes_answer_through_the_endpoint(
    served: Served, swarm: list[nodes.Node]
) -> None:
    roles = {n.name: (n.role, n.state) for n in swarm}
    assert roles[f"{PREFIX}-2"] == ("worker", "ready") and ("manager", "ready") in roles.values()
    answer = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=BODY, timeout=10)
    assert answer.status_code == 200, answer.text
    placed = served.per_node()
    assert sum(placed.values()) == 3 and len(placed) > 1, placed
    listed = cli(served.settings, "stack", "nodes")
    assert listed.returncode == 0, listed.stderr
    assert f"{PREFIX}-2" in listed.stdout
    status = cli(served.settings, "status", NAME, "--json")
    assert status.returncode == 0, status.stderr
    (slot,) = json.loads(status.stdout)["deployment"]["slots"]
    assert slot["running_per_node"] == placed and slot["proxy_up"] == 3, slot
    # Every replica's lines, gathered from the node that runs it.
    logs = cli(served.settings, "logs", NAME, "--tail", "5")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    live = served.deployment().serving()
    assert live is not None
    prefixes = {line.split("] ", 1)[0] + "]" for line in lines}
    assert prefixes == {f"[{live.color} v{live.version} {node}]" for node in placed}, lines


def test_blue_green_then_canary_back_under_steady_load_fail_no_request(served: Served) -> None:
    first, second = served.targets["first"], served.targets["second"]
    with steady_load(served.url, rate=40) as blue_green:
        rollout(second, "blue-green", served.policy, served.settings, record_policy=True)
    d = served.deployment()
    assert d.live is not None and d.instances[d.live].version == second.version
    assert d.candidate is None and list(d.instances) == [d.live]
    with steady_load(served.url, rate=40) as canary:
        rollout(first, "canary", served.policy, served.settings, record_policy=True)
    d = served.deployment()
    assert d.live is not None and d.instances[d.live].version == first.version
    for counts in (blue_green, canary):
        assert counts["sent"] > 50 and counts["failed"] == 0, counts
        assert len(counts["versions"]) == 2, counts  # both versions answered during the move
    client = engine.engine(served.settings)
    left = [s.name for s in client.services.list() if s.name.startswith(f"shipyard-{NAME}-")]
    assert sorted(left) == sorted(
        [specs.service_name(NAME, d.port, d.live), f"shipyard-{NAME}-{d.port}-proxy"]
    )


def test_scale_to_one_then_five_under_steady_load_fails_no_request(served: Served) -> None:
    with steady_load(served.url, rate=40) as counts:
        for replicas in (1, 5):
            done = cli(served.settings, "scale", NAME, str(replicas))
            assert done.returncode == 0, done.stderr
            assert sum(served.per_node().values()) == replicas
    assert counts["sent"] > 50 and counts["failed"] == 0, counts
    assert len(served.per_node()) > 1  # five replicas spread over the nodes
    endpoint = SwarmEndpoint.open(served.settings, NAME, None)
    slot = endpoint.describe()["slots"][0]
    assert slot["replicas"] == 5 and slot["proxy_up"] == 5, slot


def test_a_version_failing_the_smoke_gate_is_removed_and_traffic_stays(served: Served) -> None:
    """The second version's image checked against the first's golden outputs (other training
    seed, other probabilities): the smoke gate fails on a replica of the new service, which is
    removed while the serving version keeps all the traffic."""
    first, second = served.targets["first"], served.targets["second"]
    serving = served.deployment()
    assert serving.live is not None
    wrong = Target(NAME, second.version, second.image, first.golden)
    smoke = r"Gate 'smoke' failed: .* golden labels differ"
    with steady_load(served.url, rate=40) as counts, pytest.raises(DeployError, match=smoke):
        rollout(wrong, "blue-green", served.policy, served.settings, record_policy=True)
    assert counts["sent"] > 50 and counts["failed"] == 0, counts
    d = served.deployment()
    assert (d.live, d.candidate, d.weights) == (serving.live, None, {serving.live: 100})
    client = engine.engine(served.settings)
    idle = specs.service_name(NAME, d.port, d.idle_color())
    assert not [s for s in client.services.list() if s.name == idle]


def test_a_recreate_that_fails_its_gate_restarts_the_old_version_and_one_that_passes_serves(
    served: Served,
) -> None:
    """`recreate` removes the serving service before it starts the new one (a gap, by design).
    When the new one fails a gate, the version it replaced is started again and serves; when it
    passes, it serves alone."""
    first, second = served.targets["first"], served.targets["second"]
    serving = served.deployment()
    assert serving.live is not None
    old = serving.instances[serving.live].version
    wrong = Target(NAME, second.version, second.image, first.golden)
    with pytest.raises(DeployError, match=r"Gate 'smoke' failed: .* golden labels differ"):
        rollout(wrong, "recreate", served.policy, served.settings, record_policy=True)
    d = served.deployment()
    assert d.live is not None and d.instances[d.live].version == old and d.replaced is None
    answer = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=BODY, timeout=10)
    assert answer.status_code == 200, answer.text
    new = second if old == first.version else first
    rollout(new, "recreate", served.policy, served.settings, record_policy=True)
    d = served.deployment()
    assert d.live is not None and d.instances[d.live].version == new.version
    assert list(d.instances) == [d.live] and d.replaced is None
    answer = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=BODY, timeout=10)
    assert answer.status_code == 200, answer.text
    client = engine.engine(served.settings)
    left = [s.name for s in client.services.list() if s.name.startswith(f"shipyard-{NAME}-")]
    assert sorted(left) == sorted(
        [specs.service_name(NAME, d.port, d.live), f"shipyard-{NAME}-{d.port}-proxy"]
    )


def test_scale_and_rebalance_refuse_a_docker_target_endpoint(_deployed: Endpoint) -> None:
    before = serving_containers(_deployed.settings)
    for args in (["scale", MODEL, "2"], ["rebalance", MODEL]):
        done = cli(_deployed.settings, *args)
        assert done.returncode != 0
        assert f"`{args[0]}` needs deploy.target: swarm" in done.stderr, done.stderr
    assert serving_containers(_deployed.settings) == before


def test_the_swarm_engine_keeps_serving_the_docker_target(
    endpoint: Endpoint, swarm: list[nodes.Node]
) -> None:
    """In swarm mode, this engine still runs the Docker target's containers and proxy."""
    answer = httpx.post(f"{endpoint.url}/v2/models/{MODEL}/infer", json=BODY, timeout=10)
    assert answer.status_code == 200, answer.text


def test_deploy_tls_on_swarm_answers_https_verified_by_the_stack_ca_and_not_http(
    _deployed: Endpoint, swarm: list[nodes.Node], tmp_path: Path
) -> None:
    """`deploy.tls` on the Swarm target: HAProxy's service terminates TLS with the PEM it reads
    from the endpoint's directory; plain HTTP on the port gets no answer; the PEM is mode 600."""
    settings = _deployed.settings
    certs, _ = ensure_dev_certs(Settings(stack_dir=tmp_path / "stack"))
    version = register_copy(settings, MODEL, TLS_NAME, "champion")
    target = target_of_version(
        settings, TLS_NAME, registry.client(settings).get_model_version(TLS_NAME, version)
    )
    port = free_port("127.0.0.1")
    policy = DeployPolicy(
        target="swarm",
        replicas=2,
        port=port,
        keep_blue_seconds=1,
        ready_seconds=90,
        tls=Tls(cert=certs.cert, key=certs.key),
    )
    try:
        url = rollout(target, "blue-green", policy, settings, record_policy=True).endpoint
        assert url == f"https://127.0.0.1:{port}"
        answer = httpx.post(
            f"{url}/v2/models/{MODEL}/infer", json=BODY, verify=str(certs.ca), timeout=10
        )
        assert answer.status_code == 200, answer.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5)
        pem = settings.deploy_dir / TLS_NAME / "endpoint.pem"
        assert stat.S_IMODE(os.stat(pem).st_mode) == 0o600
        status = SwarmEndpoint.open(settings, TLS_NAME, None).describe()
        assert status["endpoint"] == url and status["slots"][0]["proxy_up"] == 2, status

        # A new certificate (another CA): HAProxy's service is started again with it.
        client = engine.engine(settings)
        proxy = f"shipyard-{TLS_NAME}-{port}-proxy"
        before = client.services.get(proxy).id
        renewed, _ = ensure_dev_certs(Settings(stack_dir=tmp_path / "renewed"))
        assert renewed.ca.read_bytes() != certs.ca.read_bytes()
        policy = policy.model_copy(update={"tls": Tls(cert=renewed.cert, key=renewed.key)})
        rollout(target, "blue-green", policy, settings, record_policy=True)
        assert client.services.get(proxy).id != before
        answer = httpx.post(
            f"{url}/v2/models/{MODEL}/infer", json=BODY, verify=str(renewed.ca), timeout=10
        )
        assert answer.status_code == 200, answer.text
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/v2/health/ready", verify=str(certs.ca), timeout=5)
    finally:
        undeploy(settings, TLS_NAME)


def test_a_local_endpoint_listens_on_its_address_only_for_ipv4_and_ipv6_clients(
    served: Served, swarm: list[nodes.Node]
) -> None:
    """Host-mode publishing binds every address of the node, IPv6 included, where Docker's
    userland proxy connects from the same gateway as this machine's own connections. With the
    default deploy host (127.0.0.1), the Swarm endpoint publishes nothing: a front HAProxy binds
    127.0.0.1 only. Another machine (a network namespace on a veth pair, with an IPv4 and an
    IPv6 address, which reaches this machine's servers on that link) cannot connect over
    either."""
    port = served.deployment().port
    assert httpx.get(f"{served.url}/v2/health/ready", timeout=5).status_code == 200
    assert _listening(port) == {"127.0.0.1"}
    endpoint = SwarmEndpoint.open(served.settings, NAME, None)
    service = engine.engine(served.settings).services.get(endpoint.proxy.name)
    assert not service.attrs.get("Endpoint", {}).get("Ports")  # Swarm publishes nothing
    described = endpoint.describe()["proxy"]  # what `status` shows
    assert "admits this machine (127.0.0.1, through " in described
    assert described.endswith("; front running")
    bridge = next(n.address for n in swarm if n.role == "manager")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{bridge}:{port}/v2/health/ready", timeout=5)

    with other_machine() as (addresses, run_there):

        def get(here: str, to: int) -> str:
            request = "GET /v2/health/ready HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n"
            return run_there(
                f"exec 3<>/dev/tcp/{here}/{to} && echo connected && "
                f"printf '{request}' >&3; timeout 5 cat <&3"
            )

        for here in addresses:
            host = f"[{here}]" if ":" in here else here
            # The control: a server of this machine on that address answers the other one.
            server = http.server.ThreadingHTTPServer
            if ":" in here:
                server = type("Server6", (server,), {"address_family": socket.AF_INET6})
            control = server((here, 0), http.server.BaseHTTPRequestHandler)
            threading.Thread(target=control.serve_forever, daemon=True).start()
            try:
                assert "HTTP/1.0 501" in get(here, control.server_address[1]), host
            finally:
                control.shutdown()
                control.server_close()
            answer = get(here, port)
            assert "connected" not in answer and "HTTP/" not in answer, (host, answer)
            assert "Connection refused" in answer, (host, answer)


def _listening(port: int) -> set[str]:
    """The addresses with a TCP socket listening on `port` (IPv4 and IPv6), from /proc."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state_ = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state_ == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
                family = socket.AF_INET if width == 8 else socket.AF_INET6
                found.add(socket.inet_ntop(family, words))
    return found


@contextlib.contextmanager
def other_machine() -> Iterator[tuple[tuple[str, str], Callable[[str], str]]]:
    """A network namespace joined to this machine by a veth pair (198.51.100.0/30 and
    fd5e:5b1d::/64): this machine's IPv4 and IPv6 addresses on that link, and a function
    running a bash script in the namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "a network namespace needs root and iproute2's `ip`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"under CI: {reason}")
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    ns, host_end, ns_end = f"shipyard-other-{tag}", f"sy{tag}h", f"sy{tag}n"
    here, there = "198.51.100.1", "198.51.100.2"
    here6, there6 = "fd5e:5b1d::1", "fd5e:5b1d::2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        ip("netns", "add", ns)
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", ns)
        ip("addr", "add", f"{here}/30", "dev", host_end)
        ip("-6", "addr", "add", f"{here6}/64", "dev", host_end, "nodad")
        ip("link", "set", host_end, "up")
        for args in (
            ["addr", "add", f"{there}/30", "dev", ns_end],
            ["-6", "addr", "add", f"{there6}/64", "dev", ns_end, "nodad"],
            ["link", "set", ns_end, "up"],
            ["route", "add", "default", "via", here],
        ):
            ip("netns", "exec", ns, "ip", *args)

        def run_there(script: str) -> str:
            done = subprocess.run(
                ["ip", "netns", "exec", ns, "bash", "-c", script],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return done.stdout + done.stderr

        yield (here, here6), run_there
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_a_worker_node_killed_under_load_its_replicas_come_back_on_the_others(
    served: Served, swarm: list[nodes.Node]
) -> None:
    """Last in this module: the node stays dead. Its replicas' servers are marked DOWN by
    HAProxy's health checks, Swarm starts them again on the remaining node; the load sees no
    failed request once they are marked down, and at most 0.1% in all."""
    settings = served.settings
    client = engine.engine(settings)
    d = served.deployment()
    assert d.live is not None
    service = client.services.get(specs.service_name(NAME, d.port, d.live))
    if sum(served.per_node().values()) < 3:
        assert cli(settings, "scale", NAME, "3").returncode == 0
    placed = served.per_node()
    victim = f"{PREFIX}-2"
    assert placed.get(victim), f"no replica on {victim}: {placed}"
    dead_ids = {n.id for n in client.nodes.list() if n.attrs["Description"]["Hostname"] == victim}
    replicas = sum(placed.values())
    alive_before = replicas - placed[victim]
    endpoint = SwarmEndpoint.open(settings, NAME, None)
    marked_down = None
    with steady_load(served.url, rate=80) as counts:
        time.sleep(2)
        killed, since_s = time.monotonic(), time.time()
        client.containers.get(victim).kill()

        def back() -> bool:
            nonlocal marked_down
            up = len(endpoint.proxy.up(d.live or ""))
            if marked_down is None and up <= alive_before:
                marked_down = time.time()
            service.reload()
            alive = [
                t
                for t in specs.tasks(service)
                if t["NodeID"] not in dead_ids and t["Status"]["State"] == "running"
            ]
            return len(alive) >= replicas and up >= replicas

        wait_until(back, 180, 0.5)
        restored = time.monotonic() - killed
        time.sleep(max(2.0, 22 - restored))  # over 1000 requests in all (55-70 a second)
    down = f"{marked_down - since_s:.1f} s" if marked_down is not None else "never"
    print(
        f"node {victim} killed: its replicas marked down after {down}, {replicas} replicas "
        f"again after {restored:.1f} s; {counts}"
    )
    log = "".join(
        line.decode(errors="replace")
        for line in client.services.get(endpoint.proxy.name).logs(
            stdout=True, stderr=True, timestamps=True, since=int(since_s)
        )
    )
    print(f"the proxy's log (servers up and down, requests that did not end normally):\n{log}")
    assert marked_down is not None, "HAProxy never marked the dead node's replicas down"
    assert counts["sent"] > 1000, counts  # so that 0.1% is at least one request
    # The targets: no failed request once HAProxy's checks have marked the dead
    # replicas down (seen by polling every 0.5 s), and under 0.1% in all.
    after = [t for t in counts["failed_at"] if t >= marked_down]
    assert not after, f"sent after the dead replicas were marked down ({marked_down}): {counts}"
    assert counts["failed"] <= counts["sent"] * 0.001, counts


def test_stack_up_brings_a_dead_node_back_and_rebalance_spreads_replicas_onto_it(
    served: Served, docker_stack: dict[str, str]
) -> None:
    """After the test above (or a machine that went down): what `stack up --nodes 2` runs
    starts the node container again, which comes back as the same swarm node (its state is on
    the host's disk), ready. Swarm moves no running replica back to it: `rebalance` spreads them
    over both nodes again, and a scale-up places the new ones on the emptiest node, under load,
    failing none."""
    settings = served.settings
    client = engine.engine(settings)
    victim = f"{PREFIX}-2"
    node = client.containers.get(victim)
    if node.status == "running":  # run alone: take the node down as a dead machine is
        node.kill()
        wait_until(lambda: {n.name: n.state for n in nodes.nodes(client)}[victim] == "down", 60)
    ids = {n.id for n in client.nodes.list() if n.attrs["Description"]["Hostname"] == victim}
    d = served.deployment()
    service = client.services.get(specs.service_name(NAME, d.port, d.live or ""))
    desired = service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"]

    def rescheduled() -> bool:  # every replica runs on the nodes left
        placed = served.per_node()
        return not placed.get(victim) and sum(placed.values()) == desired

    wait_until(rescheduled, 180, 0.5)
    with steady_load(served.url, rate=40) as counts:
        started = time.monotonic()
        found = nodes.up(settings, 2, docker_stack["base_image"], print, prefix=PREFIX)
        back_s = time.monotonic() - started
        assert {n.name: (n.role, n.state) for n in found}[victim] == ("worker", "ready"), found
        assert {
            n.id for n in client.nodes.list() if n.attrs["Description"]["Hostname"] == victim
        } == ids
        before = served.per_node()
        # Swarm moves no running replica back; `rebalance` replaces them one at a time.
        done = cli(settings, "rebalance", NAME)
        assert done.returncode == 0, done.stdout + done.stderr
        rebalanced = done.stdout.strip().splitlines()[-1]
        spread = served.per_node()
        total = sum(spread.values()) + 2
        assert cli(settings, "scale", NAME, str(total)).returncode == 0
        placed = served.per_node()
        time.sleep(1)
    print(
        f"node {victim} back and ready after {back_s:.1f} s; replicas {before}, then "
        f"`rebalance`: {rebalanced!r}, then scaled: {placed}; {counts}"
    )
    assert not before.get(victim), before
    assert sum(spread.values()) == desired and spread.get(victim), spread
    assert max(spread.values()) - min(spread.values()) <= 1, spread
    assert sum(placed.values()) == total, placed
    assert max(placed.values()) - min(placed.values()) <= 1, placed  # new ones: the emptiest
    assert counts["sent"] > 100 and counts["failed"] == 0, counts
