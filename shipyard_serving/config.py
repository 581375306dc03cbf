"""Server settings, from `SHIPYARD_SERVE_*` environment variables or constructor arguments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPYARD_SERVE_", extra="ignore")

    model_dir: Path = Field(
        default=Path("/model"), description="Bundle with model.onnx (+ shipyard.json)."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted API keys, comma-separated in the environment."
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of API keys, one per line (e.g. a mounted secret)."
    )
    open_health: bool = Field(
        default=True, description="Health, readiness and metrics answer without a key."
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_drain_bytes: int = Field(
        default=8 << 20,
        ge=0,
        description="Largest refused (413) body read and discarded so the client can read the 413.",
    )
    drain_timeout_s: float = Field(
        default=5.0, ge=0, description="Longest the server reads a refused body before closing."
    )
    max_batch_rows: int = Field(default=1024, ge=1, description="Rows one request may send.")
    request_timeout_s: float = Field(default=10.0, gt=0)
    batching: bool = Field(default=False, description="Adaptive micro-batching of requests.")
    max_batch_size: int = Field(default=256, ge=1, description="Rows per batched inference.")
    max_batch_delay_ms: float = Field(
        default=2.0, ge=0, description="Longest a request waits for others to batch with."
    )
    threads: int = Field(default=1, ge=1, description="ONNX Runtime intra-op threads per worker.")
    workers: int = Field(
        default_factory=lambda: min(os.cpu_count() or 1, 8),
        ge=1,
        description="Server processes (one ONNX Runtime session each); default: one per CPU.",
    )

    reuse_port: bool = Field(
        default=True,
        description="With several workers, each listens on its own SO_REUSEPORT socket (Linux) so "
        "the kernel spreads connections over them; false: one socket shared by all, as uvicorn's.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    def keys(self) -> list[str]:
        """Every accepted key: from settings and from the keys file."""
        keys = [k for k in self.api_keys if k]
        if self.api_keys_file is not None:
            keys += [
                line.strip() for line in self.api_keys_file.read_text().splitlines() if line.strip()
            ]
        return keys
