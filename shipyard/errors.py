"""One small exception tree: every error Shipyard raises on purpose is a `ShipyardError`.

Messages carry the offending value, what was expected, and how to fix it.
"""


class ShipyardError(Exception):
    """Root of every error Shipyard raises on purpose."""


class ManifestError(ShipyardError):
    """The model project's manifest is missing or invalid."""


class SourceError(ShipyardError):
    """The model source (path, git URL or ref) cannot be checked out."""


class ProjectError(ShipyardError):
    """A project entrypoint (data or training) cannot be loaded or raised."""


class DataError(ShipyardError):
    """The data entrypoint returned arrays that do not match the manifest."""


class ExportError(ShipyardError):
    """The trained model cannot be converted to a valid ONNX graph."""


class GateError(ShipyardError):
    """One or more release gates failed; the message lists every failure."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        lines = "\n".join(f"  - {f}" for f in failures)
        super().__init__(f"{len(failures)} release gate(s) failed:\n{lines}")


class RegistryError(ShipyardError):
    """The model registry (MLflow) refused an operation."""


class StackError(ShipyardError):
    """The local stack (Docker engine, registry, base image) is missing or cannot start."""


class ImageError(ShipyardError):
    """The release image cannot be built, smoke-tested or pushed."""


class DeployError(ShipyardError):
    """A rollout cannot start, or failed a gate and was rolled back."""

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        self.failures = failures or []
        super().__init__(message)


class Superseded(DeployError):
    """A redeploy of the champion found another version crowned meanwhile: nothing deployed."""
