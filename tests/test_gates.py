"""Gate decisions are pure: these tests build measurements by hand and check the verdict."""

from dataclasses import replace
from pathlib import Path

import pytest

from shipyard.gates import Champion, Measurement, decide, evaluate
from shipyard.inference import BatchInvariance, Latency
from shipyard.manifest import Gates, Variant

pytestmark = pytest.mark.unit

INVARIANT = BatchInvariance(0.0, 0, 360, (360, 7, 32, 100))
GATES = Gates(min_accuracy=0.95, max_accuracy_drop=0.01, max_latency_p99_ms=5.0, max_size_mb=1.0)


def measured(
    variant: Variant, size: int, accuracy: float = 0.97, p99: float = 0.5, delta: float = 1e-6
) -> Measurement:

    return Measurement(
        variant,
        Path(f"{variant}.onnx"),
        size,
        "0" * 64,
        accuracy,
        1.0,
        delta,
        Latency(p99 / 2, p99),
        Latency(p99, p99 * 2),
        [[1]],
        INVARIANT,
    )


ALL = [
    measured(Variant.FP32, 200_000),
    measured(Variant.OPTIMIZED, 190_000),
    measured(Variant.INT8, 55_000, accuracy=0.968, delta=0.1),
]


def test_the_smallest_passing_variant_wins_by_default() -> None:
    verdict = decide(ALL, GATES, None, "size")
    assert verdict.passed and verdict.chosen == Variant.INT8


def test_a_failing_variant_is_skipped_and_its_failure_recorded() -> None:
    int8 = replace(ALL[2], accuracy=0.94)
    verdict = decide([*ALL[:2], int8], GATES, None, "size")
    assert verdict.chosen == Variant.OPTIMIZED
    failed = [r for r in verdict.results if not r.passed]
    assert [(r.gate, r.variant) for r in failed] == [("min_accuracy", Variant.INT8)]
    assert failed[0].message == (
        "Gate 'min_accuracy' failed for int8: 0.9400 < minimum 0.9500 (manifest gates.min_accuracy)"
    )


def test_quantized_variants_are_not_held_to_parity() -> None:
    verdict = decide(ALL, GATES, None, "size")
    assert not any(r.gate == "parity" and r.variant == Variant.INT8 for r in verdict.results)


def test_no_passing_variant_reports_every_failure() -> None:
    slow_big = [replace(m, size_bytes=2_000_000, batch1=Latency(3.0, 9.0)) for m in ALL]
    verdict = decide(slow_big, GATES, None, "size")
    assert not verdict.passed and verdict.chosen is None
    assert len(verdict.failures) == 6
    assert any("p99 at batch 1 9.000 ms > budget 5.0 ms" in f for f in verdict.failures)
    assert any("2.000 MB > budget 1.0 MB" in f for f in verdict.failures)


def test_an_unfaithful_fp32_export_fails_the_release_even_if_int8_passes() -> None:
    fp32 = replace(ALL[0], label_agreement=0.99, max_prob_delta=0.2)
    verdict = decide([fp32, ALL[2]], GATES, None, "size")
    assert not verdict.passed
    assert any(
        f.startswith("Gate 'parity' failed for fp32: label agreement 99.00%")
        for f in verdict.failures
    )


def test_accuracy_drop_against_the_champion() -> None:
    champion = Champion(version="3", accuracy=0.985)
    verdict = decide(ALL, GATES, champion, "size")
    assert not verdict.passed  # 0.968 and 0.97 are both below 0.985 - 0.01
    message = next(f for f in verdict.failures if "max_accuracy_drop" in f and "int8" in f)
    assert "champion v3 at 0.9850; floor 0.9750" in message
    assert decide(ALL, GATES, Champion("3", 0.975), "size").chosen == Variant.INT8


def test_prefer_accuracy_and_latency() -> None:
    assert (
        decide(ALL, GATES, None, "accuracy").chosen == Variant.OPTIMIZED
    )  # tie with fp32, smaller
    fast = replace(ALL[0], batch1=Latency(0.01, 0.02))
    assert decide([fast, *ALL[1:]], GATES, None, "latency").chosen == Variant.FP32


def test_a_label_that_changes_with_its_batch_fails_batch_invariance_with_the_numbers() -> None:
    int8 = replace(ALL[2], batch_invariance=BatchInvariance(0.151, 3, 360, (360, 7, 32, 100)))
    verdict = decide([*ALL[:2], int8], GATES, None, "size")
    assert verdict.passed and verdict.chosen == Variant.OPTIMIZED
    failed = [r for r in verdict.results if not r.passed]
    assert [(r.gate, r.variant, r.value, r.threshold) for r in failed] == [
        ("batch_invariance", Variant.INT8, 0.151, 1e-4)
    ]
    assert failed[0].message.startswith(
        "Gate 'batch_invariance' failed for int8: 3 of 360 test rows changed label and max "
        "|Δprob| 1.51e-01 (limit 1e-04) between a row alone and the same row in batches of "
        "360, 7, 32, 100"
    )
    assert "optimize.quantization: static" in failed[0].message


def test_a_label_change_fails_batch_invariance_even_within_the_probability_limit() -> None:
    flips = replace(ALL[0], batch_invariance=BatchInvariance(5e-5, 1, 360, (360, 7)))
    [result] = [r for r in evaluate(flips, GATES, None) if r.gate == "batch_invariance"]
    assert not result.passed
    assert "1 of 360 test rows changed label and max |Δprob| 5.00e-05" in result.message
    assert "quantization" not in result.message  # the hint is for int8 only


def test_batch_invariance_passes_within_the_parity_limit_and_fails_past_it() -> None:
    def gate(delta: float) -> bool:
        m = replace(ALL[1], batch_invariance=BatchInvariance(delta, 0, 360, (360, 7, 32, 100)))
        return next(r.passed for r in evaluate(m, GATES, None) if r.gate == "batch_invariance")

    assert gate(0.0) and gate(1e-4)
    assert not gate(1.1e-4)


def test_every_variant_is_held_to_batch_invariance() -> None:
    results = decide(ALL, GATES, None, "size").results
    assert [r.variant for r in results if r.gate == "batch_invariance"] == [
        Variant.FP32,
        Variant.OPTIMIZED,
        Variant.INT8,
    ]
