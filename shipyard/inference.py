"""ONNX Runtime sessions and timing: how every variant is run and measured the same way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # ONNX Runtime loads with the first session: the result types need none
    import onnxruntime as ort


def session(model: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with a fixed thread count, so measurements compare like with like."""
    import onnxruntime as ort

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
class BatchInvariance:
    """How far a row's answer moves with the other rows that share its batch."""

    max_prob_delta: float
    """Largest |probability difference| of a row between batch 1 and any batch it was in."""
    label_changes: int
    """Rows whose label in some batch differs from their label at batch 1."""
    rows: int
    batch_sizes: tuple[int, ...]


def batch_invariance(
    sess: ort.InferenceSession, x: np.ndarray, sizes: tuple[int, ...] = (7, 32, 100), seed: int = 0
) -> BatchInvariance:
    """Each row of `x` alone (batch 1), against the same row inside all of `x` and inside
    batches of each of `sizes` whose rows are drawn in a seeded shuffled order.

    A server that micro-batches requests puts a row among whatever else arrived with it; a
    model whose answer depends on that company (dynamic quantization scales activations per
    call) answers the same client differently from one request to the next.
    """
    alone = [predict(sess, x[i : i + 1]) for i in range(len(x))]
    labels_alone = np.concatenate([a[0] for a in alone])
    probabilities_alone = np.concatenate([a[1] for a in alone])
    rng = np.random.default_rng(seed)
    groups = [np.arange(len(x))]
    for size in sizes:
        order = rng.permutation(len(x))
        groups += [order[i : i + size] for i in range(0, len(x), size)]
    delta, changed = 0.0, np.zeros(len(x), dtype=bool)
    for rows in groups:
        labels, probabilities = predict(sess, x[rows])
        delta = max(delta, float(np.abs(probabilities - probabilities_alone[rows]).max()))
        changed[rows] |= (labels != labels_alone[rows]).reshape(len(rows), -1).any(axis=1)
    return BatchInvariance(delta, int(changed.sum()), len(x), (len(x), *sizes))


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
