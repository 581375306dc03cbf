"""Release gates as pure functions: given the measurements, which variants pass and which wins.

Every failure is collected, then reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shipyard.inference import BatchInvariance, Latency
from shipyard.manifest import Gates, Variant

PARITY_MAX_PROB_DELTA = 1e-4
# A row's answer alone and inside any batch are held to the parity limit too: fp32 measures
# exactly 0 here, so the limit leaves room for float noise of other CPUs' kernels only.
BATCH_MAX_PROB_DELTA = PARITY_MAX_PROB_DELTA
# Variants that must compute what the framework computes; quantized ones are held to accuracy.
EXACT_VARIANTS = (Variant.FP32, Variant.OPTIMIZED)


@dataclass(frozen=True)
class Measurement:
    """What one ONNX variant is, and how it did on the test set."""

    variant: Variant
    path: Path
    size_bytes: int
    sha256: str
    accuracy: float
    label_agreement: float
    """Share of test rows where the variant's label equals the framework model's."""
    max_prob_delta: float
    """Largest |probability difference| to the framework model over the test set."""
    batch1: Latency
    batch32: Latency
    confusion: list[list[int]]
    """Test-set confusion matrix: rows are true labels, columns predicted ones."""
    batch_invariance: BatchInvariance
    """Test rows alone against the same rows inside batches of other sizes and company."""

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


@dataclass(frozen=True)
class Champion:
    """The version serving now, against which a candidate's accuracy drop is measured."""

    version: str
    accuracy: float


@dataclass(frozen=True)
class GateResult:
    gate: str
    variant: Variant
    passed: bool
    value: float
    threshold: float
    message: str


@dataclass(frozen=True)
class Verdict:
    results: list[GateResult]
    chosen: Variant | None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.chosen is not None and not self.failures


def _gate(
    gate: str, m: Measurement, ok: bool, value: float, threshold: float, detail: str
) -> GateResult:
    verdict = "passed" if ok else "failed"
    return GateResult(
        gate, m.variant, ok, value, threshold, f"Gate '{gate}' {verdict} for {m.variant}: {detail}"
    )


def _batch_invariance(m: Measurement) -> GateResult:
    b = m.batch_invariance
    ok = b.label_changes == 0 and b.max_prob_delta <= BATCH_MAX_PROB_DELTA
    detail = (
        f"{b.label_changes} of {b.rows} test rows changed label and max |Δprob| "
        f"{b.max_prob_delta:.2e} (limit {BATCH_MAX_PROB_DELTA:.0e}) between a row alone and the "
        f"same row in batches of {', '.join(map(str, b.batch_sizes))}"
    )
    if not ok:
        detail += (
            ": served with micro-batching, a row's answer would depend on the requests it "
            "shares a batch with"
        )
        if m.variant == Variant.INT8:
            detail += (
                " (dynamic quantization scales activations per call; "
                "manifest optimize.quantization: static calibrates them once)"
            )
    return _gate("batch_invariance", m, ok, b.max_prob_delta, BATCH_MAX_PROB_DELTA, detail)


def evaluate(m: Measurement, gates: Gates, champion: Champion | None) -> list[GateResult]:
    """Every gate for one variant, passed or not."""
    results = []
    if m.variant in EXACT_VARIANTS:
        ok = m.label_agreement == 1.0 and m.max_prob_delta <= PARITY_MAX_PROB_DELTA
        results.append(
            _gate(
                "parity",
                m,
                ok,
                m.max_prob_delta,
                PARITY_MAX_PROB_DELTA,
                f"label agreement {m.label_agreement:.2%} (need 100%), max |Δprob| "
                f"{m.max_prob_delta:.2e} (limit {PARITY_MAX_PROB_DELTA:.0e}) against the framework model",
            )
        )
    results.append(_batch_invariance(m))
    ok = m.accuracy >= gates.min_accuracy
    results.append(
        _gate(
            "min_accuracy",
            m,
            ok,
            m.accuracy,
            gates.min_accuracy,
            f"{m.accuracy:.4f} {'>=' if ok else '<'} minimum {gates.min_accuracy:.4f} (manifest gates.min_accuracy)",
        )
    )
    if champion is not None:
        floor = champion.accuracy - gates.max_accuracy_drop
        ok = m.accuracy >= floor
        results.append(
            _gate(
                "max_accuracy_drop",
                m,
                ok,
                m.accuracy,
                floor,
                f"{m.accuracy:.4f} against champion v{champion.version} at {champion.accuracy:.4f}; "
                f"floor {floor:.4f} with allowed drop {gates.max_accuracy_drop} (manifest gates.max_accuracy_drop)",
            )
        )
    ok = m.batch1.p99_ms <= gates.max_latency_p99_ms
    results.append(
        _gate(
            "max_latency_p99_ms",
            m,
            ok,
            m.batch1.p99_ms,
            gates.max_latency_p99_ms,
            f"p99 at batch 1 {m.batch1.p99_ms:.3f} ms {'<=' if ok else '>'} budget "
            f"{gates.max_latency_p99_ms} ms (manifest gates.max_latency_p99_ms)",
        )
    )
    ok = m.size_mb <= gates.max_size_mb
    results.append(
        _gate(
            "max_size_mb",
            m,
            ok,
            m.size_mb,
            gates.max_size_mb,
            f"{m.size_mb:.3f} MB {'<=' if ok else '>'} budget {gates.max_size_mb} MB (manifest gates.max_size_mb)",
        )
    )
    return results


def _rank(m: Measurement, prefer: str) -> tuple[float, ...]:
    # Sizes and accuracies are exact, so those choices are reproducible; latency is measured.
    if prefer == "size":
        return (m.size_bytes, -m.accuracy)
    if prefer == "accuracy":
        return (-m.accuracy, m.size_bytes)
    return (m.batch1.p50_ms, m.size_bytes)


def decide(
    measurements: list[Measurement], gates: Gates, champion: Champion | None, prefer: str
) -> Verdict:
    """Evaluate every gate of every variant and pick the best variant that passes all of them.

    The release fails when the fp32 export is not faithful to the framework model (nothing
    derived from it can be trusted) or when no variant passes every gate.
    """
    results = [r for m in measurements for r in evaluate(m, gates, champion)]
    failed = [r for r in results if not r.passed]
    passing = [m for m in measurements if not any(r.variant == m.variant for r in failed)]
    fp32_parity = [r for r in failed if r.variant == Variant.FP32 and r.gate == "parity"]
    if fp32_parity or not passing:
        return Verdict(results, None, [r.message for r in failed])
    best = min(passing, key=lambda m: _rank(m, prefer))
    return Verdict(results, best.variant)
