"""What a failed rollout's rollback is checked against before its error is raised."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard import registry
from shipyard.deploy import state
from shipyard.flows.rollout import _not_undone
from shipyard.settings import Settings

pytestmark = pytest.mark.unit

MODEL = "digits-sklearn"


def versions(settings: Settings, tmp_path: Path, count: int) -> None:
    mlflow = registry.client(settings)
    mlflow.create_registered_model(MODEL)
    for _ in range(count):
        mlflow.create_model_version(MODEL, source=str(tmp_path), run_id=None)


def test_a_complete_undo_leaves_nothing_to_report(settings: Settings, tmp_path: Path) -> None:
    versions(settings, tmp_path, 2)
    mlflow = registry.client(settings)
    registry.crown(mlflow, MODEL, "1")
    before = registry.crowned(mlflow, MODEL)
    old = registry.crown(mlflow, MODEL, "2")
    registry.restore_crown(mlflow, MODEL, *old)
    assert _not_undone(settings, MODEL, before, None) == []


def test_aliases_and_a_candidate_left_behind_are_both_named(
    settings: Settings, tmp_path: Path
) -> None:
    versions(settings, tmp_path, 2)
    mlflow = registry.client(settings)
    registry.crown(mlflow, MODEL, "1")
    before = registry.crowned(mlflow, MODEL)
    registry.crown(mlflow, MODEL, "2")  # a rollback hook that never ran
    blue = state.Instance(color="blue", version="2", image="r/m@sha256:0", container_id="c", port=1)
    state.save(
        settings.deploy_dir,
        state.Deployment(
            model=MODEL,
            host="127.0.0.1",
            port=8000,
            live="blue",
            candidate="green",
            instances={"blue": blue},
        ),
    )
    left = _not_undone(settings, MODEL, before, "1")
    assert left == [
        "champion/previous are v2/v1, were v1/none",
        "v2 serves, v1 did",
        "the new green container is still recorded",
    ]


def test_an_mlflow_that_does_not_answer_is_named_not_read_as_no_aliases(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9/"})
    [left] = _not_undone(down, MODEL, ("1", None), None)
    assert left.startswith("MLflow's aliases could not be read back")
