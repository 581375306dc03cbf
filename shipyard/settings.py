"""The one settings object: built once (environment, `.env`, `shipyard.toml`) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shipyard.errors import SourceError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class AllowedSource(BaseModel):
    """One repository the release system trusts (`[[allowed_sources]]` in shipyard.toml).

    The receiver matches a push by `repository`, the name the git host sends; the release
    checks out `url`, never a URL from the push. Matching and its rules: `shipyard/trust.py`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: str = Field(
        pattern=r"^[\w.-]+(/[\w.-]+)+$",
        description="`owner/name` as the host sends it: GitHub `repository.full_name`, GitLab "
        "`project.path_with_namespace`.",
    )
    url: str = Field(
        description="Clone URL the release uses: https://, ssh://, file:// under "
        "allowed_file_root, or http:// to a loopback host only. Never with a password or token "
        "in it: name one in `credentials`."
    )
    models: list[str] = Field(
        min_length=1, description="Manifest `name`s this repository may release."
    )
    branches: list[str] = Field(
        default=["main"], min_length=1, description="Branches (fnmatch globs) whose pushes release."
    )
    paths: list[str] = Field(
        default_factory=list,
        description="Globs of changed paths that release; empty: every path.",
    )
    network: bool = Field(
        default=False, description="Grants a manifest's `sandbox.network` (default: refused)."
    )
    credentials: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Name of an environment variable, else of a Prefect Secret block, holding "
        "the HTTPS token (`token` or `user:token`) git sends for `url`.",
    )

    @field_validator("url")
    @classmethod
    def _clone_url(cls, url: str, info: ValidationInfo) -> str:
        parts = urlsplit(url)
        if parts.password is not None or (parts.username and parts.scheme != "ssh"):
            # Not a ValueError: pydantic would quote the URL, token included, in its error.
            host = f"{parts.scheme}://{parts.hostname}{parts.path}"
            raise SourceError(
                f"allowed_sources entry {info.data.get('repository', '?')!r}: url {host!r} "
                "carries a user or token, and the settings are no place for secrets: remove "
                "them from the URL, put the token in an environment variable or Prefect Secret "
                "block, and name it in the entry's `credentials`."
            )
        loopback = parts.scheme == "http" and parts.hostname in LOOPBACK
        if parts.scheme not in ("https", "ssh", "file") and not loopback:
            raise ValueError(
                f"must be an https://, ssh:// or file:// URL (http:// only to 127.0.0.1), got "
                f"{parts.scheme or 'no'} scheme"
            )
        if parts.scheme != "file" and not parts.hostname:
            raise ValueError("names no host")
        return url


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
    mlflow_server_url: str | None = Field(
        default=None,
        description="A tracking server that serves the embedded store (the stack's sets it): "
        "clients reach the store through it while it answers, else open the SQLite file.",
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
    postgres_port: int = Field(
        default=5433,
        ge=1,
        le=65535,
        description="Port of the stack's Postgres (`stack up --backend postgres`), on 127.0.0.1.",
    )
    deploy_host: str = Field(
        default="127.0.0.1",
        description="Address the stable endpoints and the serving containers' ports bind to. "
        "On Swarm (which publishes on every address): loopback binds that address only, "
        "through a front HAProxy on the host's network; any other address publishes on all.",
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
    sandbox_copy_source: bool = Field(
        default=False,
        description="Mount a copy of Shipyard's package (under the builds directory) into the "
        "sandbox, not its install path: set in the docker pool's runs, whose engine is the "
        "host's, where the run's own install path means nothing.",
    )

    allowed_file_root: Path | None = Field(
        default=None,
        description="Directory under which file:// sources and local directories may be "
        "allowed (they must still match an `allowed_sources` entry).",
    )
    allowed_sources: list[AllowedSource] = Field(
        default_factory=list,
        description="Repositories whose pushes release and which releases may check out (JSON "
        "in SHIPYARD_ALLOWED_SOURCES, `[[allowed_sources]]` tables in shipyard.toml). Empty: "
        "the receiver refuses every push, and a release takes any source (single-user mode).",
    )

    @field_validator("allowed_sources")
    @classmethod
    def _file_sources_under_root(
        cls, entries: list[AllowedSource], info: ValidationInfo
    ) -> list[AllowedSource]:
        # A field validator, not a model validator: its error shows this list, not every
        # setting's input (passwords included).
        root = info.data.get("allowed_file_root")
        for i, entry in enumerate(entries):
            if urlsplit(entry.url).scheme != "file":
                continue
            path = Path(urlsplit(entry.url).path).resolve()
            if root is None or not path.is_relative_to(Path(root).resolve()):
                raise ValueError(
                    f"allowed_sources[{i}].url {entry.url!r} is a file:// URL outside "
                    f"allowed_file_root ({root or 'not set'}): set allowed_file_root to the "
                    "directory holding the repositories, or use an https:// or ssh:// URL"
                )
        return entries

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
