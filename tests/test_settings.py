"""Settings: constructor > environment (SHIPYARD_*) > `.env` > `shipyard.toml` > defaults, the
two files read from the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from shipyard.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and an environment without any Shipyard or MLflow setting,
    whatever the shell that runs the tests exports."""
    for name in os.environ:
        if name.upper().startswith("SHIPYARD_") or name.upper() == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_apply_when_nothing_is_configured(workdir: Path) -> None:
    settings = Settings()
    assert settings.state_dir == Path(".shipyard")
    assert settings.latency_runs == 200
    assert settings.registry == "127.0.0.1:5000"
    assert settings.mlflow_tracking_uri is None
    assert settings.tracking_uri == f"sqlite:///{workdir / '.shipyard' / 'mlflow.db'}"


def test_shipyard_toml_in_the_working_directory_is_read(workdir: Path) -> None:
    (workdir / "shipyard.toml").write_text(
        'state_dir = "/srv/shipyard"\n'
        "latency_runs = 30\n"
        'registry = "registry.example:5000"\n'
        'mlflow_tracking_uri = "http://mlflow.example:5000"\n'
    )
    settings = Settings()
    assert settings.state_dir == Path("/srv/shipyard")
    assert settings.latency_runs == 30
    assert settings.registry == "registry.example:5000"
    assert settings.tracking_uri == "http://mlflow.example:5000"


def test_a_dotenv_file_in_the_working_directory_is_read(workdir: Path) -> None:
    (workdir / ".env").write_text(
        "SHIPYARD_STATE_DIR=/srv/dotenv\n"
        "SHIPYARD_PUSH_ATTEMPTS=7\n"
        "SHIPYARD_REGISTRY_PASSWORD=hunter2\n"
        "MLFLOW_TRACKING_URI=http://dotenv.example:5000\n"
    )
    settings = Settings()
    assert settings.state_dir == Path("/srv/dotenv")
    assert settings.push_attempts == 7
    assert settings.registry_password is not None
    assert settings.registry_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    assert settings.tracking_uri == "http://dotenv.example:5000"


def test_each_source_overrides_the_ones_below_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One setting per layer: each is set in its own layer and in every layer below it.
    (workdir / "shipyard.toml").write_text(
        'registry = "toml:1"\n'
        'deploy_host = "10.0.0.4"\n'
        'services_host = "10.0.0.3"\n'
        'base_image = "toml/base"\n'
    )
    (workdir / ".env").write_text(
        "SHIPYARD_REGISTRY=dotenv:2\n"
        "SHIPYARD_DEPLOY_HOST=10.0.0.2\n"
        "SHIPYARD_SERVICES_HOST=10.0.0.1\n"
    )
    monkeypatch.setenv("SHIPYARD_REGISTRY", "env:3")
    monkeypatch.setenv("SHIPYARD_DEPLOY_HOST", "10.0.0.9")
    settings = Settings(registry="constructor:4")
    assert settings.registry == "constructor:4"  # constructor > environment
    assert settings.deploy_host == "10.0.0.9"  # environment > .env
    assert settings.services_host == "10.0.0.1"  # .env > shipyard.toml
    assert settings.base_image == "toml/base"  # shipyard.toml > default
    assert settings.mlflow_port == 5001  # nothing set: the default


def test_the_mlflow_tracking_uri_comes_from_either_name_and_shipyards_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow-own:5000")
    assert Settings().tracking_uri == "http://mlflow-own:5000"
    monkeypatch.setenv("SHIPYARD_MLFLOW_TRACKING_URI", "http://shipyard:5000")
    assert Settings().tracking_uri == "http://shipyard:5000"


def test_files_in_another_directory_are_not_read(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "shipyard.toml").write_text("latency_runs = 30\n")
    (workdir / ".env").write_text("SHIPYARD_PUSH_ATTEMPTS=7\n")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = Settings()
    assert (settings.latency_runs, settings.push_attempts) == (200, 4)


def test_a_bad_value_in_shipyard_toml_is_refused_naming_the_setting(workdir: Path) -> None:
    (workdir / "shipyard.toml").write_text("latency_runs = 5\n")
    with pytest.raises(ValidationError) as e:
        Settings()
    [error] = e.value.errors()
    assert error["loc"] == ("latency_runs",)
    assert error["msg"] == "Input should be greater than or equal to 10"
