"""The task cache is robust: a cached result that is gone, unreadable, written under another
HOME or by another worker, or that names build files since deleted, is a miss that recomputes
the same bytes, never a failed release. Real Prefect server, MLflow on SQLite, CLI subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from shipyard.contracts import ReleaseSummary
from shipyard.flows.release import release
from shipyard.settings import Settings
from tests.flows.test_release import task_states

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]

CACHED = ("train", "export", "optimize")


@pytest.fixture(autouse=True)
def prefect_storage(tmp_path: Path) -> Iterator[Path]:
    """Prefect's default result storage for in-process runs: what `~/.prefect/storage` is to a
    user, here a directory of the test's own."""
    storage = tmp_path / "prefect-storage"
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: storage}):
        yield storage


def release_here(repo: Path, settings: Settings) -> ReleaseSummary:
    summary = release(source=repo.as_uri(), ref="main", until="validate", settings=settings)
    assert summary.status == "validated"
    return summary


def assert_builds_back(settings: Settings, summary: ReleaseSummary) -> None:
    """Every build file the cached results name is on disk, the chosen variant with the bytes
    the release reports: what register and build read next."""
    build = settings.builds_dir / str(summary.fingerprint)
    for name in ("train/model.pkl", "train/reference.npy", "onnx/fp32.onnx", "onnx/optimized.onnx"):
        assert (build / name).is_file(), name
    chosen = build / "onnx" / f"{summary.variant}.onnx"
    assert hashlib.sha256(chosen.read_bytes()).hexdigest() == summary.onnx_sha256


def worker(repo: Path, settings: Settings, api_url: str, home: Path) -> subprocess.Popen[str]:
    """`python -m shipyard release` as another worker runs it: its own process and HOME, the
    same Prefect server and state directory."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "HOME": str(home),
        "SHIPYARD_STATE_DIR": str(settings.state_dir),
        "SHIPYARD_LATENCY_RUNS": str(settings.latency_runs),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    args = ["release", repo.as_uri(), "--ref", "main", "--until", "validate", "--json"]
    return subprocess.Popen(
        [sys.executable, "-m", "shipyard", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finished(process: subprocess.Popen[str]) -> ReleaseSummary:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    print(err[-4000:])  # shown if the test fails: why a stage missed the cache, for one
    return ReleaseSummary.model_validate(json.loads(out.strip().splitlines()[-1]))


def states(summary: ReleaseSummary) -> dict[str, str]:
    """The Prefect state of each cached stage in that release's flow run."""
    every = task_states(summary.flow_run_id)
    return {stage: every[stage] for stage in CACHED}


def recomputed(*stages: str) -> dict[str, str]:
    return {s: "Completed" if s in stages else "Cached" for s in CACHED}


@pytest.fixture
def first(sklearn_repo: Path, settings: Settings) -> ReleaseSummary:
    """A first release of digits-sklearn up to validate, on a fresh state directory."""
    summary = release_here(sklearn_repo, settings)
    assert states(summary) == recomputed(*CACHED)
    assert summary.variant == "int8"  # the variant `int8-altered` alters is the one shipped
    assert_builds_back(settings, summary)
    return summary


Damage = Callable[[Settings, str, Path], None]


def _record(settings: Settings, stage: str, fingerprint: str) -> Path:
    return settings.cache_dir / f"{stage}-{fingerprint}"


def _truncate(stage: str) -> Damage:
    def damage(settings: Settings, fp: str, prefect_storage: Path) -> None:
        record = _record(settings, stage, fp)
        record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])

    return damage


def _garble(stage: str) -> Damage:
    def damage(settings: Settings, fp: str, prefect_storage: Path) -> None:
        record = _record(settings, stage, fp)
        record.write_bytes(os.urandom(record.stat().st_size))

    return damage


def _delete_build(relative: str) -> Damage:
    def damage(settings: Settings, fp: str, prefect_storage: Path) -> None:
        path = settings.builds_dir / fp / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


def _alter_build(relative: str) -> Damage:
    def damage(settings: Settings, fp: str, prefect_storage: Path) -> None:
        with (settings.builds_dir / fp / relative).open("ab") as f:
            f.write(b"\0")

    return damage


def _nothing(settings: Settings, fp: str, prefect_storage: Path) -> None:
    pass


def _delete_prefect_storage(settings: Settings, fp: str, prefect_storage: Path) -> None:
    shutil.rmtree(prefect_storage, ignore_errors=True)


def _delete_cache(settings: Settings, fp: str, prefect_storage: Path) -> None:
    shutil.rmtree(settings.cache_dir)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        pytest.param(_nothing, recomputed(), id="intact"),
        pytest.param(_delete_prefect_storage, recomputed(), id="prefect-storage-deleted"),
        pytest.param(_delete_cache, recomputed(*CACHED), id="cached-results-deleted"),
        pytest.param(_truncate("train"), recomputed("train"), id="train-result-truncated"),
        pytest.param(_garble("optimize"), recomputed("optimize"), id="optimize-result-garbled"),
        pytest.param(_delete_build("train"), recomputed("train"), id="trained-model-deleted"),
        pytest.param(_delete_build("onnx"), recomputed("export", "optimize"), id="onnx-deleted"),
        pytest.param(_alter_build("onnx/int8.onnx"), recomputed("optimize"), id="int8-altered"),
    ],
)
def test_a_second_release_after_damage_reuses_what_is_usable_and_recomputes_the_rest(
    first: ReleaseSummary,
    sklearn_repo: Path,
    settings: Settings,
    prefect_storage: Path,
    damage: Damage,
    expected: dict[str, str],
) -> None:
    assert first.fingerprint
    damage(settings, first.fingerprint, prefect_storage)
    second = release_here(sklearn_repo, settings)

    assert second.onnx_sha256 == first.onnx_sha256
    assert states(second) == expected
    assert_builds_back(settings, second)
    third = release_here(sklearn_repo, settings)  # what was recomputed is cached again
    assert states(third) == recomputed()


def test_a_release_under_another_home_reuses_the_cache(
    first: ReleaseSummary,
    sklearn_repo: Path,
    settings: Settings,
    tmp_path: Path,
    prefect_server: str,
) -> None:
    second = finished(worker(sklearn_repo, settings, prefect_server, tmp_path / "other-home"))

    assert second.onnx_sha256 == first.onnx_sha256
    assert states(second) == recomputed()


def test_two_workers_releasing_at_once_train_once_and_ship_the_same_bytes(
    sklearn_repo: Path, settings: Settings, tmp_path: Path, prefect_server: str
) -> None:
    workers = [
        worker(sklearn_repo, settings, prefect_server, tmp_path / f"home-{n}") for n in (1, 2)
    ]
    a, b = (finished(w) for w in workers)

    assert a.fingerprint == b.fingerprint and a.onnx_sha256 == b.onnx_sha256
    # The build lock serializes them: whichever comes second finds every result cached.
    assert sorted([states(a), states(b)], key=lambda s: s["train"]) == [
        recomputed(),
        recomputed(*CACHED),
    ]
