"""What is deployed where: one JSON file per model endpoint, rewritten after every change.

It is what a rollback (of a transaction, or `shipyard rollback`) restores from, and what
`shipyard status` reads; containers carry the same facts as labels.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from shipyard.manifest import DeployPolicy


class Instance(BaseModel):
    color: str
    version: str
    image: str
    """repository@sha256:…, as pulled."""
    container_id: str
    port: int


class Deployment(BaseModel):
    model: str
    host: str
    port: int
    policy: DeployPolicy = DeployPolicy()
    live: str | None = None
    """The color serving before the rollout under way (or after the last one)."""
    candidate: str | None = None
    """The color of a rollout under way, until it is retired or reverted."""
    replaced: Instance | None = None
    """What a `recreate` rollout stopped, restarted if the rollout is reverted."""
    rollout_by: dict[str, int] | None = None
    """The process (pid and start time) running the rollout under way: once it is gone, the
    rollout was cut off, and `shipyard stack up` undoes it."""
    instances: dict[str, Instance] = Field(default_factory=dict)
    weights: dict[str, int] = Field(default_factory=dict)

    @property
    def url(self) -> str:
        scheme = "https" if self.policy.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def idle_color(self) -> str:
        return "green" if self.live == "blue" else "blue"

    def serving(self) -> Instance | None:
        return self.instances.get(self.live) if self.live else None


def path(deploy_dir: Path, model: str) -> Path:
    return deploy_dir / model / "state.json"


def load(deploy_dir: Path, model: str) -> Deployment | None:
    file = path(deploy_dir, model)
    return Deployment.model_validate_json(file.read_text()) if file.is_file() else None


def save(deploy_dir: Path, deployment: Deployment) -> None:
    file = path(deploy_dir, deployment.model)
    file.parent.mkdir(parents=True, exist_ok=True)
    staged = file.with_suffix(".tmp")
    staged.write_text(deployment.model_dump_json(indent=2))
    staged.replace(file)  # atomic: a reader never sees half a state
