"""The one settings object: built once (environment, `.env`, `shipyard.toml`) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    """Shipyard's settings. Environment variables are `SHIPYARD_<FIELD>`.

    Precedence: constructor arguments, environment, `.env`, `shipyard.toml`, defaults.
    """

    model_config = SettingsConfigDict(
        env_prefix="SHIPYARD_",
        env_file=".env",
        extra="ignore",
        toml_file="shipyard.toml",
    )

    state_dir: Path = Field(
        default=Path(".shipyard"),
        description="Where builds, the embedded MLflow store and the task cache live.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SHIPYARD_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking server; default: SQLite under state_dir.",
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description="Base URL of an MLflow UI, for links; default: the tracking URI if HTTP.",
    )
    latency_runs: int = Field(
        default=200, ge=10, description="Timed inferences per variant and batch size."
    )
    ort_threads: int = Field(
        default=1, ge=1, description="ONNX Runtime intra-op threads when measuring variants."
    )
    stack_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "shipyard" / "stack",
        description="What `shipyard stack up` starts and keeps: engine log, registry storage, base.",
    )
    registry: str = Field(
        default="127.0.0.1:5000", description="Registry (host:port) release images are pushed to."
    )
    registry_username: str = "shipyard"
    registry_password: SecretStr | None = Field(
        default=None,
        description="Registry password; default: the local stack's generated one.",
    )
    registry_password_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the registry password."
    )
    base_image: str = Field(
        default="python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7",
        description="Base of release images, pinned by digest. When it cannot be pulled, the "
        "stack's Debian-built equivalent is used.",
    )
    push_attempts: int = Field(default=4, ge=1, description="Push attempts on transient errors.")
    services_host: str = Field(
        default="127.0.0.1", description="Where `stack up` binds the Prefect and MLflow servers."
    )
    prefect_port: int = Field(default=4200, ge=1, le=65535, description="Prefect server/UI port.")
    mlflow_port: int = Field(default=5001, ge=1, le=65535, description="MLflow server/UI port.")
    deploy_host: str = Field(
        default="127.0.0.1",
        description="Address the stable endpoints and the serving containers' ports bind to.",
    )
    serve_api_key: SecretStr | None = Field(
        default=None,
        description="API key deployed servers require (Bearer or X-API-Key); the rollout's "
        "smoke requests use it. Default: no key.",
    )
    serve_workers: int | None = Field(
        default=None, ge=1, description="Server processes per container; default: one per CPU."
    )

    sandbox: Literal["container", "off"] = Field(
        default="container",
        description="Where the model project's own code (data, train, export) runs: `container` "
        "(no network, no secrets, no Docker socket, read-only source, limits) or `off` (in the "
        "worker's process: only for code you trust, e.g. your own working tree).",
    )
    sandbox_memory_mb: int = Field(default=4096, ge=256, description="Sandbox memory limit, MiB.")
    sandbox_cpus: float = Field(default=2.0, gt=0, description="Sandbox CPU limit, in cores.")
    sandbox_pids: int = Field(default=512, ge=32, description="Sandbox process/thread limit.")
    sandbox_timeout_s: float = Field(
        default=3600, gt=0, description="Longest a sandboxed stage (data, train, export) may run."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls)
        return init_settings, env_settings, dotenv_settings, toml, file_secret_settings

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force: the configured one or the embedded SQLite store."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.state_dir.resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        """Where the embedded store keeps artifacts."""
        return self.state_dir.resolve() / "mlartifacts"

    @property
    def builds_dir(self) -> Path:
        return self.state_dir.resolve() / "builds"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir.resolve() / "cache"

    @property
    def deploy_dir(self) -> Path:
        """Per-model deploy state and the HAProxy of its endpoint."""
        return self.state_dir.resolve() / "deploy"

    @property
    def checkouts_dir(self) -> Path:
        return self.state_dir.resolve() / "checkouts"

    @property
    def stack_file(self) -> Path:
        """What `shipyard stack up` started and built (`stack.json`)."""
        return self.stack_dir / "stack.json"

    @property
    def registry_password_file(self) -> Path:
        """The local registry's generated password (mode 600)."""
        return self.stack_dir / "registry-password"

    @property
    def wheelhouse_dir(self) -> Path:
        """The serving image's locked wheels, downloaded once per lock on the host."""
        return self.stack_dir / "wheelhouse"
