"""ONNX Runtime sessions and timing: how every variant is run and measured the same way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(model: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with a fixed thread count, so measurements compare like with like."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) for a batch, by the served output names."""
    name = sess.get_inputs()[0].name
    label, probabilities = sess.run(["label", "probabilities"], {name: x})
    return np.asarray(label), np.asarray(probabilities)


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float


def latency(sess: ort.InferenceSession, x: np.ndarray, runs: int, warmup: int = 10) -> Latency:
    """p50/p99 wall time of `runs` single calls on batch `x`, after `warmup` calls."""
    name = sess.get_inputs()[0].name
    feed = {name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times[i] = time.perf_counter() - start
    p50, p99 = np.percentile(times * 1000, [50, 99])
    return Latency(round(float(p50), 4), round(float(p99), 4))
