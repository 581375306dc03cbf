"""Micro-batching cannot change an answer: a row sent alone and the same row sent while other
requests share its batch get the same bytes back, from the static-INT8 model a release ships."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from shipyard.export import export_onnx
from shipyard.manifest import Manifest, Variant
from shipyard.optimize import build_variants
from shipyard.project import Dataset
from shipyard.training import TrainedModel
from tests.support.servers import start_server

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def int8_bundle(
    tmp_path_factory: pytest.TempPathFactory,
    sklearn_trained: tuple[Manifest, Dataset, TrainedModel],
) -> Path:
    """model.onnx (digits-sklearn, static INT8) + shipyard.json, as a release writes them."""
    manifest, data, trained = sklearn_trained
    optimize = manifest.optimize.model_copy(update={"quantization": "static"})
    manifest = manifest.model_copy(update={"optimize": optimize})
    out = tmp_path_factory.mktemp("int8-bundle")
    paths = build_variants(export_onnx(trained, manifest, out), manifest, data, out / "onnx")
    paths[Variant.INT8].rename(out / "model.onnx")
    metadata = {"name": manifest.name, "version": "1", "labels": manifest.labels, "variant": "int8"}
    (out / "shipyard.json").write_text(json.dumps(metadata))
    return out


def batched_calls(metrics: str) -> float:
    [count] = re.findall(r"^shipyard_inference_batch_rows_count (\S+)$", metrics, re.MULTILINE)
    return float(count)


def test_a_row_alone_and_the_same_row_batched_with_others_get_identical_bytes(
    int8_bundle: Path, digits: Dataset
) -> None:
    x = digits.x_test[:48].tolist()
    server = start_server(int8_bundle, batching="true", max_batch_delay_ms=20)
    try:
        url = f"{server.url}/invocations"
        alone = [httpx.post(url, json={"inputs": [row]}).content for row in x]
        calls_alone = batched_calls(httpx.get(f"{server.url}/metrics").text)
        # Each row once on its own request and once inside a request of 5 shuffled rows, all
        # at the same time: the server puts them into batches of whatever arrived together.
        groups = np.random.default_rng(0).permutation(len(x)).reshape(-1, 6)[:, :5].tolist()

        async def burst() -> tuple[list[bytes], list[dict]]:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
                answers = await asyncio.gather(
                    *(client.post(url, json={"inputs": [row]}) for row in x),
                    *(client.post(url, json={"inputs": [x[i] for i in g]}) for g in groups),
                )
            assert all(a.status_code == 200 for a in answers)
            return [a.content for a in answers[: len(x)]], [a.json() for a in answers[len(x) :]]

        together, grouped = asyncio.run(burst())
        calls = batched_calls(httpx.get(f"{server.url}/metrics").text) - calls_alone
    finally:
        server.stop()
    assert calls < len(x) + len(groups), "no two requests shared a batch: nothing was tested"
    answered_otherwise = [i for i, body in enumerate(together) if body != alone[i]]
    assert answered_otherwise == []
    for group, answer in zip(groups, grouped, strict=True):
        for k, i in enumerate(group):
            lone = json.loads(alone[i])["predictions"]
            assert answer["predictions"]["label"][k] == lone["label"][0]
            got = np.float32(answer["predictions"]["probabilities"][k]).tobytes()
            assert got == np.float32(lone["probabilities"][0]).tobytes(), f"row {i}"
