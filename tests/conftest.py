"""Shared fixtures: one real Prefect server per run, a fresh MLflow SQLite store per test,
and real git repositories holding the reference projects."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.training import TrainedModel
from tests.support.projects import make_repo, trained

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
# The test server stores events every 0.5 s instead of 5: tests that wait for an event to be
# stored (or for a sentinel after which nothing else may be) wait that much less.
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5")

from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from shipyard import registry
from shipyard.settings import Settings

TIERS = ("unit", "services", "docker", "e2e")
NEEDS_ENGINE = {"docker_stack", "image_settings", "endpoint"}
NEEDS_SERVICES = {"prefect_server", *NEEDS_ENGINE}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test names its tier, a `unit` test uses no service (`make test-fast`, -m unit,
    must never start a Prefect server or touch the engine), and a `services` test does not use
    the engine (`make test` runs those beside the engine's tests)."""
    problems = []
    for item in items:
        tiers = [t for t in TIERS if item.get_closest_marker(t)]
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: tier markers {tiers}, expected exactly one of {TIERS}")
        elif tiers == ["unit"] and NEEDS_SERVICES & set(getattr(item, "fixturenames", ())):
            used = sorted(NEEDS_SERVICES & set(item.fixturenames))  # type: ignore[attr-defined]
            problems.append(f"{item.nodeid}: marked unit but uses {used}; mark it services/docker")
        elif tiers == ["services"] and NEEDS_ENGINE & set(getattr(item, "fixturenames", ())):
            used = sorted(NEEDS_ENGINE & set(item.fixturenames))  # type: ignore[attr-defined]
            problems.append(f"{item.nodeid}: marked services but uses {used}; mark it docker")
    if problems:
        raise pytest.UsageError("Test tiers:\n" + "\n".join(problems))
    # The chaos test restarts the engine and the registry: after every other test.
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)


def pytest_report_header() -> str:
    from tests.support import fuzz

    return f"fuzz seed: {fuzz.SEED} (SHIPYARD_FUZZ_SEED={fuzz.SEED} replays it), {fuzz.EXAMPLES} examples"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real Prefect server (SQLite) for the whole run, started by the first test that needs
    it (the `unit` tier never does); yields its API URL."""
    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema migrated once (about 4 s), copied per test."""
    state = tmp_path_factory.mktemp("mlflow-template")
    registry.client(Settings(state_dir=state)).search_experiments()
    return state / "mlflow.db"


@pytest.fixture
def settings(tmp_path: Path, _mlflow_template: Path) -> Settings:
    """Settings on a fresh state directory: empty task cache, empty MLflow store."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(_mlflow_template, state / "mlflow.db")
    return Settings(state_dir=state, latency_runs=50)


@pytest.fixture
def sklearn_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path, "digits-sklearn")


@pytest.fixture
def make_settings(tmp_path: Path, _mlflow_template: Path):
    """A factory of settings on separate fresh state directories."""

    def make(name: str) -> Settings:
        state = tmp_path / name
        state.mkdir()
        shutil.copy(_mlflow_template, state / "mlflow.db")
        return Settings(state_dir=state, latency_runs=50)

    return make


@pytest.fixture(scope="session")
def docker_stack() -> dict[str, str]:
    """The engine, registry and base image that `make test` brings up (`shipyard stack up`).

    A test that needs them fails when they are missing; it never skips.
    """
    from shipyard import engine

    settings = Settings()
    try:
        client = engine.engine(settings)
        credentials = engine.registry_login(settings)
    except Exception as e:
        pytest.fail(f"The Docker stack is not up ({e}); run `shipyard stack up` (make test does).")
    base = engine.base_image(settings)
    if base.startswith(f"{credentials.address}/"):
        client.images.pull(base, auth_config=credentials.auth())  # the stack's own base
    else:
        client.images.get(base)
    return {"registry": credentials.address, "base_image": base}


@pytest.fixture
def image_settings(settings: Settings, docker_stack: dict[str, str]) -> Settings:
    """Fresh release state on the shared stack."""
    return settings


@pytest.fixture(scope="session")
def sklearn_trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Manifest, Dataset, TrainedModel]:
    """digits-sklearn trained once per run by the plain stage function (tests read it only)."""
    return trained("digits-sklearn", tmp_path_factory.mktemp("sk"))


@pytest.fixture(scope="session")
def cnn_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Dataset, TrainedModel]:
    """digits-cnn trained once per run by the plain stage function (tests read it only)."""
    return trained("digits-cnn", tmp_path_factory.mktemp("cnn"))
