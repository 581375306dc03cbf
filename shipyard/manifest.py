"""The model project contract: `shipyard.yaml`, validated by a typed schema.

A model project is a directory holding a manifest that names the model, its framework,
its data and training entrypoints, the served input signature, its labels, the release
gates and the optimizations wanted.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shipyard.errors import ManifestError

MANIFEST_NAME = "shipyard.yaml"

ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
# Registry model names double as image repository names (lowercase, no spaces).
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class Framework(StrEnum):
    SKLEARN = "sklearn"
    PYTORCH = "pytorch"


class Variant(StrEnum):
    """ONNX variants a release can produce, in the order they are derived."""

    FP32 = "fp32"
    OPTIMIZED = "optimized"
    INT8 = "int8"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entrypoints(_Strict):
    data: Annotated[str, Field(pattern=ENTRYPOINT_PATTERN)] = Field(
        description="`module:function` returning x_train, y_train, x_test, y_test."
    )
    train: Annotated[str, Field(pattern=ENTRYPOINT_PATTERN)] = Field(
        description="`module:function(x, y, *, seed, params)` returning a fitted model."
    )


class InputSignature(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    dtype: Literal["float32"] = "float32"
    shape: list[int | None] = Field(min_length=2)

    @field_validator("shape")
    @classmethod
    def _dynamic_batch(cls, shape: list[int | None]) -> list[int | None]:
        if shape[0] is not None:
            raise ValueError(f"first axis must be the dynamic batch axis `null`, got {shape[0]}")
        if any(d is None or d < 1 for d in shape[1:]):
            raise ValueError(f"axes after the batch axis must be positive integers, got {shape}")
        return shape

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.shape[1:] if d is not None)


class Gates(_Strict):
    min_accuracy: float = Field(ge=0, le=1, description="Test accuracy a release must reach.")
    max_accuracy_drop: float = Field(
        default=0.01, ge=0, le=1, description="Largest accuracy loss allowed against `champion`."
    )
    max_latency_p99_ms: float = Field(gt=0, description="p99 latency budget at batch 1, in ms.")
    max_size_mb: float = Field(gt=0, description="Size budget of the served ONNX file, in MB.")


class Optimize(_Strict):
    variants: list[Variant] = Field(
        default=[Variant.FP32, Variant.OPTIMIZED, Variant.INT8], min_length=1
    )
    quantization: Literal["dynamic", "static"] = Field(
        default="static",
        description="`static`: QDQ with activation scales calibrated once on training rows. "
        "`dynamic`: scales computed per call, so a row's answer can depend on the rows batched "
        "with it; the `batch_invariance` gate fails such an int8 variant.",
    )
    calibration_samples: int = Field(default=256, ge=16, le=10_000)
    prefer: Literal["size", "accuracy", "latency"] = Field(
        default="size",
        description="How the best variant passing every gate is picked. `size` and `accuracy` "
        "are exact, so the same commit always picks the same variant; `latency` is measured.",
    )

    @field_validator("variants")
    @classmethod
    def _fp32_first(cls, variants: list[Variant]) -> list[Variant]:
        if Variant.FP32 not in variants:
            raise ValueError(
                "must include 'fp32': it is the reference the others are checked against"
            )
        if len(set(variants)) != len(variants):
            raise ValueError(f"lists a variant twice: {[v.value for v in variants]}")
        return variants


class Resources(_Strict):
    """Limits of one serving container (Docker `--memory`, `--cpus`, `--pids-limit`; the pod's
    `resources.limits` on Kubernetes)."""

    memory_mb: int = Field(default=1024, ge=64, description="Memory limit, MiB.")
    cpus: float = Field(default=2.0, gt=0, le=256, description="CPU limit, in cores.")
    pids: int = Field(default=256, ge=16, description="Process/thread limit.")


class Tls(_Strict):
    """TLS terminated by the endpoint's HAProxy: PEM files on the deploy host."""

    cert: Path = Field(description="PEM certificate (chain) file of the endpoint.")
    key: Path = Field(description="PEM private key file of the certificate.")


class Autoscale(_Strict):
    """How each track scales on Kubernetes (`shipyard render k8s`): a HorizontalPodAutoscaler
    (autoscaling/v2) on CPU and, with a metrics adapter, on requests per second."""

    min_replicas: int = Field(default=2, ge=1, le=1000, description="Fewest stable replicas.")
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most stable replicas.")
    cpu_percent: int = Field(
        default=70, ge=1, le=100, description="Target CPU use, % of the request (= the limit)."
    )
    rps_per_replica: float | None = Field(
        default=None, gt=0, description="Target requests per second per replica (needs an adapter)."
    )
    metrics_adapter: Literal["prometheus-adapter"] | None = Field(
        default=None,
        description="The adapter serving `shipyard_requests_per_second` on the custom metrics "
        "API; none: scale on CPU only.",
    )

    @model_validator(mode="after")
    def _coherent(self) -> Autoscale:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}: "
                f"set max_replicas to at least {self.min_replicas}"
            )
        if (self.rps_per_replica is None) != (self.metrics_adapter is None):
            raise ValueError(
                f"rps_per_replica {self.rps_per_replica} and metrics_adapter "
                f"{self.metrics_adapter!r} go together (the requests-per-second metric is served "
                "by the adapter): set both, e.g. metrics_adapter: prometheus-adapter, or neither"
            )
        return self


Strategy = Literal["blue-green", "canary", "recreate"]
"""How a rollout moves traffic to the new version (`deploy.strategy`)."""

DeployTarget = Literal["docker", "swarm"]
"""Where versions run (`deploy.target`): containers on this engine, or Swarm services."""
MAX_REPLICAS = 16
"""The most replicas a version has on Swarm (the servers HAProxy keeps per slot)."""


class DeployPolicy(_Strict):
    """How a release is rolled out on the Docker target, and the limits its gates hold it to.

    Not part of the release fingerprint: changing the rollout does not retrain the model.
    """

    port: int = Field(
        default=8000, ge=1, le=65535, description="Stable endpoint port on the deploy host."
    )
    strategy: Strategy = "blue-green"
    target: DeployTarget = Field(
        default="docker",
        description="`docker`: one container per version on this engine; `swarm`: one Swarm "
        "service per version, `replicas` tasks spread over the nodes.",
    )
    replicas: int = Field(
        default=1, ge=1, le=MAX_REPLICAS, description="Tasks per version (target swarm only)."
    )
    canary_steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default=[10, 50, 100], min_length=1, description="Traffic % on the new version, in order."
    )
    step_seconds: float = Field(
        default=10, ge=0, description="How long each canary step is held while gates are read."
    )
    keep_blue_seconds: float = Field(
        default=30,
        ge=0,
        description="How long the old version stays warm after the switch, for instant rollback.",
    )
    ready_seconds: float = Field(
        default=60, gt=0, description="How long a new container may take to become ready."
    )
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Share of 5xx answers the new version may give."
    )
    max_p99_ms: float = Field(
        default=250, gt=0, description="p99 latency of the new version under live traffic, ms."
    )
    resources: Resources = Resources()
    autoscale: Autoscale = Autoscale()
    tls: Tls | None = Field(
        default=None, description="Serve the endpoint over HTTPS with this certificate and key."
    )

    @field_validator("canary_steps")
    @classmethod
    def _rising_to_100(cls, steps: list[int]) -> list[int]:
        if steps != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError(f"must rise strictly and end at 100, got {steps}")
        return steps

    @model_validator(mode="after")
    def _replicas_need_swarm(self) -> DeployPolicy:
        if self.replicas > 1 and self.target != "swarm":
            raise ValueError(
                f"replicas {self.replicas} needs target: swarm (the docker target runs one "
                "container per version): set deploy.target: swarm, or drop deploy.replicas"
            )
        return self


class Sandbox(_Strict):
    """What the project's own code (data, train, export) may reach in its sandbox."""

    network: bool = Field(
        default=False,
        description="Give the sandbox a network; also needs `network: true` on the repository's "
        "entry in the allowed sources.",
    )


class Manifest(_Strict):
    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
    framework: Framework
    entrypoints: Entrypoints
    input: InputSignature
    labels: list[str] = Field(min_length=2)
    gates: Gates
    optimize: Optimize = Optimize()
    seed: int = Field(default=0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    deploy: DeployPolicy = DeployPolicy()
    sandbox: Sandbox = Sandbox()

    @model_validator(mode="after")
    def _unique_labels(self) -> Manifest:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        return self

    def canonical_json(self) -> str:
        """A stable serialization of what defines the model, used in the release fingerprint."""
        return json.dumps(
            self.model_dump(mode="json", exclude={"deploy"}), sort_keys=True, separators=(",", ":")
        )


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = "" if e["type"] == "missing" else f" (got {e['input']!r})"
        lines.append(f"  - {field}: {e['msg']}{got}")
    return f"{source}: {len(lines)} invalid field(s):\n" + "\n".join(lines)


def parse_manifest(data: Any, source: str = MANIFEST_NAME) -> Manifest:
    """Validate manifest data, raising `ManifestError` that names every bad field."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ManifestError(
            _describe(e, source) + f"\nSee examples/digits-sklearn/{MANIFEST_NAME} for a valid one."
        ) from e


def load_manifest(project_dir: Path) -> Manifest:
    """Read and validate `shipyard.yaml` in `project_dir`."""
    path = project_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"No {MANIFEST_NAME} in {project_dir}: a model project needs one. "
            f"Copy examples/digits-sklearn/{MANIFEST_NAME} and adapt it."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML: {e}") from e
    return parse_manifest(data, str(path))
