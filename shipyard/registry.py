"""MLflow as the version store: one run and at most one registered version per fingerprint.

Aliases: `candidate` names the newest release that passed its gates; `champion` names what
serves (moved by a deploy that passed every step); `previous` what served before it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shipyard.contracts import VersionTags
from shipyard.errors import RegistryError
from shipyard.gates import Champion
from shipyard.settings import Settings

if TYPE_CHECKING:  # MLflow (about a second to import) loads with the first client
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CANDIDATE = "candidate"
CHAMPION = "champion"
PREVIOUS = "previous"
FINGERPRINT_TAG = "shipyard.fingerprint"


def client(settings: Settings) -> MlflowClient:
    """A client for the configured store; the embedded SQLite one lives in `state_dir`, and is
    reached through the server that serves it (`mlflow_server_url`) while that answers."""
    with _collector_off():  # MLflow brings 190k objects: no collection walks them meanwhile
        from mlflow import MlflowClient

    # Over HTTP, MLflow prints "🏃 View run … at: …" to stdout as each run ends (one more request
    # too): it would break `--json` output. The release report links the run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = store_uri(settings)
    if uri == settings.tracking_uri and not settings.mlflow_tracking_uri:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def store_uri(settings: Settings) -> str:
    """Where this process's clients reach the store: the configured tracking URI; for the
    embedded store, the server serving it when it answers. Opening the SQLite file costs each
    process about 2 s (MLflow's SQLAlchemy engine and its schema check); the server has paid
    that once, and is then the file's one writer."""
    served = settings.mlflow_server_url
    if settings.mlflow_tracking_uri or not served:
        return settings.tracking_uri
    return served if _answers(served.rstrip("/")) else settings.tracking_uri


@functools.cache
def _answers(server: str) -> bool:
    """Asked once per process: a release does not switch stores halfway. The standard library's
    client: httpx loads a CA bundle for every client, even for http:// (about 40 ms)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{server}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError):  # refused, timed out, an HTTP error status, a bad URL
        return False


def experiment_id(mlflow: MlflowClient, settings: Settings, model: str) -> str:
    """The model's experiment, created on first use (artifacts under `state_dir` when embedded)."""
    existing = mlflow.get_experiment_by_name(model)
    if existing is not None:
        return str(existing.experiment_id)
    location = None if settings.mlflow_tracking_uri else (settings.artifact_root / model).as_uri()
    return str(mlflow.create_experiment(model, artifact_location=location))


def release_run(
    mlflow: MlflowClient, experiment: str, fingerprint: str, tags: dict[str, str]
) -> str:
    """The MLflow run of this fingerprint: reused when a release of it was started before."""
    runs = mlflow.search_runs(
        [experiment],
        f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if runs:
        run_id = str(runs[0].info.run_id)
        mlflow.update_run(run_id, status="RUNNING")
        return run_id
    run = mlflow.create_run(
        experiment,
        tags={FINGERPRINT_TAG: fingerprint, **tags},
        run_name=f"release-{fingerprint[:12]}",
    )
    return str(run.info.run_id)


def version_by_fingerprint(
    mlflow: MlflowClient, model: str, fingerprint: str
) -> ModelVersion | None:
    versions = mlflow.search_model_versions(
        f"name = '{model}' and tags.fingerprint = '{fingerprint}'"
    )
    return min(versions, key=lambda v: int(v.version)) if versions else None


def version_by_alias(mlflow: MlflowClient, model: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_model_version_by_alias(model, alias)
    except MlflowException:
        return None  # no such model or alias


def version_by_number(mlflow: MlflowClient, model: str, version: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_model_version(model, version)
    except MlflowException:
        return None


def tags_of(version: ModelVersion) -> VersionTags:
    """A registered version's tags, typed."""
    return VersionTags.from_mlflow(dict(version.tags))


def tag_image(mlflow: MlflowClient, model: str, version: str, reference: str, digest: str) -> None:
    """Record the image a version was pushed as: what deploys of it pull (by digest)."""
    for key, value in VersionTags(image=reference, image_digest=digest).to_mlflow().items():
        mlflow.set_model_version_tag(model, version, key, value)


def champion(mlflow: MlflowClient, model: str) -> Champion | None:
    """The serving version and its accuracy, if one has been promoted."""
    version = version_by_alias(mlflow, model, CHAMPION)
    if version is None:
        return None
    accuracy = tags_of(version).accuracy
    if accuracy is None:
        raise RegistryError(
            f"{model} v{version.version} is aliased {CHAMPION!r} but has no 'accuracy' tag, so the "
            "accuracy-drop gate cannot compare against it: promote a version Shipyard released, "
            f"or tag it (MlflowClient.set_model_version_tag({model!r}, {version.version!r}, 'accuracy', ...))."
        )
    return Champion(str(version.version), accuracy)


def register(
    mlflow: MlflowClient, model: str, source: str, run_id: str, tags: dict[str, str]
) -> ModelVersion:
    """Create the version and point `candidate` at it, or leave nothing behind."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            mlflow.get_registered_model(model)
        except MlflowException:
            mlflow.create_registered_model(model, tags={"managed_by": "shipyard"})
        version = mlflow.create_model_version(model, source=source, run_id=run_id, tags=tags)
    except MlflowException as e:
        raise RegistryError(f"MLflow refused to register {model!r}: {e.message}") from e
    try:
        mlflow.set_registered_model_alias(model, CANDIDATE, version.version)
    except MlflowException as e:
        mlflow.delete_model_version(model, version.version)  # no half-registered versions
        raise RegistryError(
            f"MLflow refused alias {CANDIDATE!r} on {model} v{version.version}: {e.message}; "
            "the version was removed."
        ) from e
    return version


def _alias(mlflow: MlflowClient, model: str, alias: str) -> str | None:
    version = version_by_alias(mlflow, model, alias)
    return str(version.version) if version else None


def _set_alias(mlflow: MlflowClient, model: str, alias: str, version: str | None) -> None:
    from mlflow.exceptions import MlflowException

    if version is None:
        with contextlib.suppress(MlflowException):
            mlflow.delete_registered_model_alias(model, alias)
    else:
        mlflow.set_registered_model_alias(model, alias, version)


def crowned(mlflow: MlflowClient, model: str) -> tuple[str | None, str | None]:
    """The versions `champion` and `previous` name now. An MLflow that does not answer raises
    (unlike `version_by_alias`): an answer of "none" must mean none."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = mlflow.get_registered_model(model).aliases
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        aliases = {}
    found = (aliases.get(CHAMPION), aliases.get(PREVIOUS))
    return (
        str(found[0]) if found[0] is not None else None,
        str(found[1]) if found[1] is not None else None,
    )


def crown(mlflow: MlflowClient, model: str, version: str) -> tuple[str | None, str | None]:
    """Point `champion` at `version` and `previous` at the old champion (if another one).

    Returns the old (champion, previous), for `restore_crown`.
    """
    from mlflow.exceptions import MlflowException

    old = crowned(mlflow, model)
    try:
        if old[0] is not None and old[0] != version:
            mlflow.set_registered_model_alias(model, PREVIOUS, old[0])
        mlflow.set_registered_model_alias(model, CHAMPION, version)
    except MlflowException as e:
        restore_crown(mlflow, model, *old)
        raise RegistryError(
            f"MLflow refused to move {CHAMPION!r} to {model} v{version}: {e.message}"
        ) from e
    return old


def restore_crown(
    mlflow: MlflowClient, model: str, champion: str | None, previous: str | None
) -> None:
    """Put `champion` and `previous` back where `crown` found them."""
    _set_alias(mlflow, model, CHAMPION, champion)
    _set_alias(mlflow, model, PREVIOUS, previous)


def dethrone(mlflow: MlflowClient, model: str) -> None:
    """Nothing serves `model` any more: its `champion` becomes `previous`."""
    champion = _alias(mlflow, model, CHAMPION)
    if champion is not None:
        restore_crown(mlflow, model, None, champion)


@dataclass(frozen=True)
class AliasStatus:
    alias: str
    version: str
    tags: dict[str, str]
    source: str


def aliases(mlflow: MlflowClient, model: str) -> list[AliasStatus]:
    """Every alias of `model` with its version's tags, for `shipyard status`."""
    from mlflow.exceptions import MlflowException

    try:
        registered = mlflow.get_registered_model(model)
    except MlflowException as e:
        raise RegistryError(
            f"No registered model {model!r} in {mlflow.tracking_uri}: release it first "
            "(shipyard release SOURCE), or point SHIPYARD_STATE_DIR / MLFLOW_TRACKING_URI at its store."
        ) from e
    out = []
    for alias, number in sorted(registered.aliases.items()):
        v = mlflow.get_model_version(model, str(number))
        out.append(AliasStatus(alias, str(v.version), dict(v.tags), str(v.source)))
    return out


def summary_tags(values: dict[str, Any]) -> dict[str, str]:
    """MLflow tags are strings; drop empty values rather than storing 'None'."""
    return {k: str(v) for k, v in values.items() if v is not None and v != ""}
