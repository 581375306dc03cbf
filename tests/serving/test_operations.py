"""Running the server: metrics, worker processes, micro-batching, graceful shutdown, startup."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

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


@pytest.mark.unit
def test_two_workers_share_one_view_of_the_metrics(serve, digits: Dataset) -> None:
    server = serve(workers=2)
    for _ in range(40):  # a new connection each: the kernel spreads them over both workers
        assert (
            httpx.post(f"{server.url}/invocations", json={"inputs": rows(digits, 1)}).status_code
            == 200
        )
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "shipyard_requests_total", route="/invocations", status="200") == 40


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


@pytest.mark.unit
def test_sigterm_lets_an_in_flight_request_finish(serve, digits: Dataset) -> None:
    server = serve()
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
