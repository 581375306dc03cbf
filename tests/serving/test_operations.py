"""Running the server: metrics, worker processes, micro-batching, graceful shutdown, startup."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.multiprocess import MultiProcessCollector

from shipyard import registry
from shipyard.flows.release import release
from shipyard.project import Dataset
from shipyard.settings import Settings
from shipyard_serving.model import ModelLoadError, ServedModel
from tests.support.servers import free_port, rows, start_server

SHIPYARD = str(Path(sys.executable).parent / "shipyard")


def metric(text: str, name: str, /, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            sample, value = line.rsplit(" ", 1)
            found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
            if sample.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
                return float(value)
    raise AssertionError(f"no sample {name} {labels} in metrics")


@pytest.mark.unit
def test_metrics_count_requests_latency_rows_and_model(serve, digits: Dataset) -> None:
    server = serve()
    for n in (1, 3, 5):
        assert (
            httpx.post(f"{server.url}/invocations", json={"inputs": rows(digits, n)}).status_code
            == 200
        )
    assert httpx.post(f"{server.url}/invocations", json={"inputs": [[1]]}).status_code == 400
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "shipyard_requests_total", route="/invocations", status="200") == 3
    assert metric(text, "shipyard_requests_total", route="/invocations", status="400") == 1
    assert metric(text, "shipyard_request_duration_seconds_count", route="/invocations") == 4
    assert metric(text, "shipyard_inference_batch_rows_sum") == 9
    assert (
        metric(text, "shipyard_model_info", name="digits-sklearn", version="7", git_sha="a" * 40)
        == 1
    )
    assert metric(text, "shipyard_inflight_requests") == 1  # the scrape itself
    assert "_created" not in text


def invocations_by_pid(metrics_dir: Path) -> dict[int, float]:
    """`/invocations` 200s counted by each worker process, read from its own counter file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        try:
            families = MultiProcessCollector.merge([str(path)])
        except struct.error:  # the worker is creating the file right now: nothing counted yet
            continue
        counts[int(path.stem.rsplit("_", 1)[1])] = sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "shipyard_requests_total"
            and sample.labels == {"route": "/invocations", "status": "200"}
        )
    return counts


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.unit
@pytest.mark.parametrize("reuse_port", ["true", "false"])
def test_two_workers_share_one_view_of_the_metrics(
    serve, digits: Dataset, tmp_path: Path, reuse_port: str
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = serve(
        workers=2, reuse_port=reuse_port, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    )
    sent = 0
    # A new connection each: the kernel spreads them over both workers, but not by turns.
    while sum(count > 0 for count in invocations_by_pid(metrics_dir).values()) < 2:
        assert sent < 400, (
            f"after {sent} requests, /invocations 200s by worker pid in the metrics files: "
            f"{invocations_by_pid(metrics_dir)}; expected two workers with some"
        )
        answer = httpx.post(f"{server.url}/invocations", json={"inputs": rows(digits, 1)})
        assert answer.status_code == 200
        sent += 1
    by_pid = invocations_by_pid(metrics_dir)
    served = {pid for pid, count in by_pid.items() if count > 0}
    assert len(served) == 2 and all(parent_of(pid) == server.process.pid for pid in served)
    # Forked from the server with the app imported, not spawned (a new interpreter each).
    command = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert all(Path(f"/proc/{pid}/cmdline").read_bytes() == command for pid in served)
    assert sum(by_pid.values()) == sent
    text = httpx.get(f"{server.url}/metrics").text  # a scrape of one worker counts both
    assert metric(text, "shipyard_requests_total", route="/invocations", status="200") == sent


def listening_on(port: int) -> int:
    """How many IPv4 sockets are listening on `port` (proc(5), /proc/net/tcp: state 0A)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    fields = [line.split() for line in lines]
    return sum(f[1].endswith(f":{port:04X}") and f[3] == "0A" for f in fields)


@pytest.mark.unit
def test_connections_opened_together_spread_over_the_workers(
    serve, digits: Dataset, tmp_path: Path
) -> None:
    """A pool of keep-alive connections opened at once (a load balancer's, a client's) lands on
    every worker, not on the one the kernel happens to wake first."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = serve(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    port = int(server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    while listening_on(port) < 2:  # each worker listens once its model is loaded
        assert time.monotonic() < deadline, f"{listening_on(port)} sockets listen on {port}"
        time.sleep(0.1)
    connections = 32

    async def pool() -> list[int]:
        clients = [httpx.AsyncClient(base_url=server.url, timeout=30) for _ in range(connections)]
        try:
            answers = await asyncio.gather(
                *(c.post("/invocations", json={"inputs": rows(digits, 1)}) for c in clients)
            )
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        return [a.status_code for a in answers]

    assert asyncio.run(pool()) == [200] * connections
    by_pid = invocations_by_pid(metrics_dir)
    assert sum(by_pid.values()) == connections
    # Spread by a hash of each connection's addresses: fewer than 4 of 32 on one of two workers
    # has a chance of 3 in a million.
    assert len(by_pid) == 2 and min(by_pid.values()) >= 4, by_pid


@pytest.mark.unit
def test_a_second_server_on_a_port_in_use_stops_instead_of_sharing_it(serve) -> None:
    first = serve(workers=2)
    port = first.url.rsplit(":", 1)[1]
    with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1 port {port}: .*in use"):
        serve(workers=2, port=port)
    assert httpx.get(f"{first.url}/v2/health/ready").status_code == 200


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.unit
def test_a_second_server_on_a_port_whose_server_is_still_starting_stops(
    serve, bundle: Path, tmp_path: Path
) -> None:
    """Before its workers listen (they load their model first), a server holds its port: a
    second one started then must not join it and take half of its connections."""
    keys = tmp_path / "keys"
    os.mkfifo(keys)  # the workers' startup reads their keys from it: it waits for a writer
    (tmp_path / "metrics").mkdir()
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_SERVE_")},
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "SHIPYARD_SERVE_MODEL_DIR": str(bundle),
        "SHIPYARD_SERVE_PORT": str(port),
        "SHIPYARD_SERVE_WORKERS": "2",
        "SHIPYARD_SERVE_API_KEYS_FILE": str(keys),
    }
    first = subprocess.Popen(
        [sys.executable, "-m", "shipyard_serving"], env=environment, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while len(children_of(first.pid)) < 2:  # the port is held before the workers start
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert listening_on(port) == 0
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1 port {port}: "):
            serve(workers=2, port=port)
    finally:
        for pid in [*children_of(first.pid), first.pid]:
            os.kill(pid, signal.SIGKILL)
        first.wait(timeout=30)


@pytest.mark.unit
def test_micro_batching_answers_each_request_with_its_own_rows(
    serve, bundle: Path, digits: Dataset
) -> None:
    server = serve(batching="true", max_batch_delay_ms=20)
    x = digits.x_test[:32]

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as client:
            answers = await asyncio.gather(
                *(
                    client.post(f"{server.url}/invocations", json={"inputs": [row]})
                    for row in x.tolist()
                )
            )
        return [a.json()["predictions"] for a in answers]

    predictions = asyncio.run(burst())
    model = ServedModel(bundle)
    labels, probabilities = model.predict(x)
    assert [p["label"][0] for p in predictions] == labels.tolist()
    assert np.allclose([p["probabilities"][0] for p in predictions], probabilities, atol=1e-6)
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "shipyard_inference_batch_rows_sum") == 32
    assert metric(text, "shipyard_inference_batch_rows_count") < 32  # some calls held several rows


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model served like any release (`pixels` [N, 64] → `label`, `probabilities`) whose graph
    is 64 dense 1024x1024 layers: ~1 ms of ONNX Runtime per row where digits-sklearn takes 2 µs,
    so a batch outlasts a timeout by far while its body arrives in well under a millisecond."""
    layers, width = 64, 1024
    rng = np.random.default_rng(0)
    weights = {
        "w_in": rng.normal(0, 1 / 8, (64, width)),
        "w": rng.normal(0, 1 / np.sqrt(width), (width, width)),
        "w_out": rng.normal(0, 1 / np.sqrt(width), (width, 10)),
    }
    nodes = [helper.make_node("MatMul", ["pixels", "w_in"], ["h0"])]
    for i in range(layers):  # one shared weight: a 4 MB file
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("MatMul", [f"h{layers}", "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
        ],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    out = tmp_path_factory.mktemp("slow-bundle")
    onnx.save(model, out / "model.onnx")
    (out / "shipyard.json").write_text(json.dumps({"name": "slow", "version": "1"}))
    return out


@pytest.mark.unit
def test_an_inference_that_outlasts_the_request_timeout_gets_504_and_the_server_goes_on(
    slow_bundle: Path,
) -> None:
    # REQUEST_TIMEOUT_S bounds the wait for a batch on the batched path (the unbatched one calls
    # ONNX Runtime inline). 2048 rows take ~2 s here; their 262 kB body arrives in ~1 ms.
    timeout_s, n = 0.1, 2048
    server = start_server(
        slow_bundle, batching="true", request_timeout_s=timeout_s, max_batch_rows=n
    )
    try:
        started = time.monotonic()
        answer = httpx.post(
            f"{server.url}/invocations", json={"inputs": [[0] * 64] * n}, timeout=30
        )
        waited = time.monotonic() - started
        assert answer.status_code == 504, answer.text[:300]
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {"error": f"request took longer than {timeout_s} s"}
        assert waited < 0.6  # answered at the timeout, not once the inference is done
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200

        # The abandoned batch runs to its end (ONNX Runtime cannot be interrupted); then the
        # server infers again.
        deadline = time.monotonic() + 30
        while (
            metric(httpx.get(f"{server.url}/metrics").text, "shipyard_inference_batch_rows_count")
            < 1
        ):
            assert time.monotonic() < deadline, "the abandoned batch never finished"
            time.sleep(0.05)
        small = httpx.post(f"{server.url}/invocations", json={"inputs": [[0] * 64] * 2})
        assert small.status_code == 200, small.text
        assert small.json()["predictions"]["label"] == [0, 0]
        text = httpx.get(f"{server.url}/metrics").text
        assert metric(text, "shipyard_requests_total", route="/invocations", status="504") == 1
        assert metric(text, "shipyard_requests_total", route="/invocations", status="200") == 1
        assert metric(text, "shipyard_inference_batch_rows_sum") == n + 2
    finally:
        server.stop()


@pytest.mark.unit
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_an_in_flight_request_finish(serve, digits: Dataset, workers: int) -> None:
    server = serve(workers=workers)
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"inputs": rows(digits, 2)}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body[:20])  # the request is in flight, its body half sent
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.process.poll() is None  # still draining
        sock.sendall(body[20:])
        response = b""
        while b"}}" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert len(json.loads(response.split(b"\r\n\r\n", 1)[1])["predictions"]["label"]) == 2
    # uvicorn re-raises the signal once it has drained, so the exit status is SIGTERM's.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live")


@pytest.mark.unit
def test_keys_from_a_mounted_file(serve, tmp_path: Path, digits: Dataset) -> None:
    keys = tmp_path / "keys"
    keys.write_text("first-key\n\nsecond-key\n")
    server = serve(api_keys_file=keys, open_health="false")
    body = {"inputs": rows(digits, 1)}
    assert (
        httpx.post(
            f"{server.url}/invocations", json=body, headers={"X-API-Key": "second-key"}
        ).status_code
        == 200
    )
    assert httpx.get(f"{server.url}/metrics").status_code == 401  # health closed too
    assert httpx.get(f"{server.url}/metrics", headers={"X-API-Key": "first-key"}).status_code == 200


@pytest.mark.unit
def test_a_directory_without_a_model_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="No model.onnx"):
        ServedModel(tmp_path)
    with pytest.raises(RuntimeError, match="No model.onnx"):
        start_server(tmp_path)


@pytest.mark.unit
def test_two_workers_that_cannot_load_their_model_exit_with_the_startup_failure_code(
    tmp_path: Path,
) -> None:
    """A supervisor (Docker's restart policy, systemd) sees a failure, not a clean exit."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_SERVE_")}
    done = subprocess.run(
        [sys.executable, "-m", "shipyard_serving"],
        env={
            **environment,
            "SHIPYARD_SERVE_MODEL_DIR": str(tmp_path),
            "SHIPYARD_SERVE_PORT": str(free_port()),
            "SHIPYARD_SERVE_WORKERS": "2",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr[-2000:]  # uvicorn's STARTUP_FAILURE
    assert "No model.onnx" in done.stderr


@pytest.mark.services
@pytest.mark.usefixtures("prefect_server")
def test_shipyard_serve_a_registered_version(sklearn_repo: Path, settings: Settings) -> None:
    summary = release(source=sklearn_repo.as_uri(), ref="main", until="register", settings=settings)
    port = free_port()
    env = {**os.environ, "SHIPYARD_STATE_DIR": str(settings.state_dir)}
    process = subprocess.Popen(
        [
            SHIPYARD,
            "serve",
            "models:/digits-sklearn@candidate",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                meta = httpx.get(
                    f"http://127.0.0.1:{port}/v2/models/digits-sklearn", timeout=1
                ).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(timeout=30)
    tags = registry.client(settings).get_model_version_by_alias("digits-sklearn", "candidate").tags
    assert meta["versions"] == [summary.version]
    assert meta["parameters"]["onnx_sha256"] == tags["onnx_sha256"]
    assert meta["parameters"]["git_sha"] == tags["git_sha"]
    assert meta["parameters"]["labels"] == [str(i) for i in range(10)]


@pytest.mark.unit
def test_a_body_that_never_arrives_gets_408(serve) -> None:
    server = serve(request_timeout_s=1)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"inputs":'
        )
        response = b""
        # Head and body may arrive in separate segments: read until the body is complete.
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 408"), response[:100]
    assert b'"field":"body"' in response
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


@pytest.mark.unit
def test_a_body_sent_in_parts_with_pauses_is_read_whole(serve, digits: Dataset) -> None:
    server = serve(request_timeout_s=5)
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"inputs": rows(digits, 2)}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for part in (body[:10], body[10:100], body[100:]):  # the server waits for each
            time.sleep(0.2)
            sock.sendall(part)
        response = b""
        while b"}}" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert len(json.loads(response.split(b"\r\n\r\n", 1)[1])["predictions"]["label"]) == 2
