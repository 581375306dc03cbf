"""What Shipyard hands across boundaries, defined once: a release's summary, a rollout's result,
and a model version's tags in MLflow. The CLI, the JSON summaries, the release report and the
registry all read and write these models; no other module spells their keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


def pinned(reference: str, digest: str) -> str:
    """`repository@digest` from `repository:tag` (or `repository`) and a manifest digest: the one
    way an image is referred to once pushed, so what deploys is what was tested."""
    repository = reference.partition("@")[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:  # a tag, not a registry's port
        repository = repository.rpartition(":")[0]
    return f"{repository}@{digest}"


class RolloutResult(BaseModel):
    """What a deploy (release, promote, rollback) left serving."""

    model_config = ConfigDict(frozen=True)

    model: str
    endpoint: str
    """The stable URL the model answers on."""
    deployed_version: str
    previous_version: str | None = None
    """The version `champion` named before; `shipyard rollback` serves it again."""
    strategy: str
    rolled_back_to: str | None = None
    """Set by the `rollback` flow: the version it served again."""

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class StageTiming(BaseModel):
    """One stage a flow ran: its final Prefect state, how long it took, and whether its result
    came from the cache."""

    model_config = ConfigDict(frozen=True)

    stage: str
    state: str
    """Prefect's state name: `Completed`, `Cached`, `Failed`, …"""
    seconds: float
    cached: bool


class ReleaseSummary(BaseModel):
    """The outcome of a release, as the CLI prints it and `--json` emits it.

    Fields stay None until the stage that fills them has run; `to_json` leaves them out, so a
    release stopped early (`--until`) has only what it did.
    """

    model_config = ConfigDict(extra="forbid")

    model: str
    status: str
    source: str
    ref: str | None = None
    git_sha: str | None = None
    git_dirty: bool = False
    flow_run_id: str | None = None
    fingerprint: str | None = None
    mlflow_run_id: str | None = None
    metrics: dict[str, float] | None = None
    variant: str | None = None
    onnx_sha256: str | None = None
    version: str | None = None
    reused: bool | None = None
    """True when this fingerprint was registered before and that version was reused."""
    image: str | None = None
    image_digest: str | None = None
    image_size_bytes: int | None = None
    endpoint: str | None = None
    deployed_version: str | None = None
    previous_version: str | None = None
    strategy: str | None = None
    flow_run_url: str | None = None
    mlflow_run_url: str | None = None
    mlflow_version_url: str | None = None
    seconds: float | None = None
    """The release's wall time in its flow run, from its first stage to its report."""
    stages: list[StageTiming] | None = None
    """Every stage the release ran, in order, with its state and duration."""

    def deployed(self, rollout: RolloutResult) -> ReleaseSummary:
        """This summary after `rollout` served its version."""
        fields = rollout.model_dump(include={"endpoint", "deployed_version", "previous_version"})
        return self.model_copy(
            update={**fields, "strategy": rollout.strategy, "status": "deployed"}
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class VersionTags(BaseModel):
    """A registered version's MLflow tags. Every field is optional when read: a version that
    Shipyard did not register may lack any of them, and a reader says which it needs."""

    model_config = ConfigDict(extra="ignore")

    fingerprint: str | None = None
    git_sha: str | None = None
    git_dirty: bool | None = None
    source: str | None = None
    ref: str | None = None
    commit_time: int | None = None
    onnx_sha256: str | None = None
    variant: str | None = None
    accuracy: float | None = None
    size_bytes: int | None = None
    data_sha256: str | None = None
    prefect_flow_run_id: str | None = None
    image: str | None = None
    """repository:tag as pushed."""
    image_digest: str | None = None

    @classmethod
    def from_mlflow(cls, tags: dict[str, str]) -> VersionTags:
        return cls.model_validate({k: v for k, v in tags.items() if v != ""})

    def to_mlflow(self) -> dict[str, str]:
        """MLflow tags are strings: booleans lowercase, accuracy to six places, None left out."""
        out = {}
        for key, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, bool):
                out[key] = str(value).lower()
            elif key == "accuracy":
                out[key] = f"{value:.6f}"
            else:
                out[key] = str(value)
        return out

    def missing(self, *names: str) -> list[str]:
        """Which of `names` this version has no tag for."""
        return [name for name in names if getattr(self, name) is None]

    @property
    def pinned_image(self) -> str | None:
        """The pushed image by digest, as deploys pull it; None when it was never pushed."""
        if not self.image or not self.image_digest:
            return None
        return pinned(self.image, self.image_digest)
