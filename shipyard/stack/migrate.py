"""`shipyard stack migrate --to postgres`: a stack on SQLite moves to its own Postgres.

What moves:
- MLflow, whole: every table of the embedded SQLite store (experiments, runs, params,
  metrics, tags, registered models, versions, aliases, logged models, …) copied row for row
  into the `mlflow` database, ids kept; artifact URIs under the embedded store's artifact
  root (`file://…/mlartifacts/…`) rewritten to the served `mlflow-artifacts:/…`, and the
  artifact files copied to where the server serves them from.
- Prefect, what an operator made: variables, global concurrency limits (their settings, not
  their taken slots), blocks (Secret blocks with their values) and automations of their own.
  Shipyard's deployments, their triggers and the cron schedule are registered again from
  prefect.yaml by `stack up`.

What does not: Prefect's history (flow and task runs, their logs, events, Prefect
artifacts such as release reports) and deployments that are not prefect.yaml's. The SQLite
files stay where they were: `shipyard stack up --backend sqlite` goes back to them.

Run it when no release runs: the servers restart on the new stores.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import StackError
from shipyard.settings import Settings
from shipyard.stack import credentials, postgres, services, supervisor
from shipyard.stack.engine import Say

CHUNK = 5000
SERVED = "mlflow-artifacts:"


@dataclass
class PrefectObjects:
    """What an operator made on the Prefect server, as its API returns it."""

    variables: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    automations: list[dict[str, Any]] = field(default_factory=list)


def read_prefect(settings: Settings) -> PrefectObjects:
    """Variables, global concurrency limits, named blocks (with secrets) and the automations no
    deployment owns, from the stack's Prefect server."""
    api = credentials.stack_api(settings)
    client = credentials.http_client(settings)
    try:

        def query(path: str, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
            answer = client.request("GET" if body is None else "POST", f"{api}{path}", json=body)
            answer.raise_for_status()
            return list(answer.json())

        # A deployment's triggers are automations related to it (Prefect keeps the relation,
        # not the owner, in what it returns): `stack up` makes them again with the deployment.
        owned = {
            automation["id"]
            for deployment in query("/deployments/filter", {})
            for automation in query(
                f"/automations/related-to/prefect.deployment.{deployment['id']}"
            )
        }
        return PrefectObjects(
            variables=query("/variables/filter", {}),
            limits=query("/v2/concurrency_limits/filter", {"limit": 200}),
            blocks=query(
                "/block_documents/filter",
                {"include_secrets": True, "block_documents": {"is_anonymous": {"eq_": False}}},
            ),
            automations=[a for a in query("/automations/filter", {}) if a["id"] not in owned],
        )
    finally:
        client.close()


def runs_under_way(settings: Settings) -> list[str]:
    """The names of the flow runs that are pending or running on the stack's Prefect server."""
    api = credentials.stack_api(settings)
    client = credentials.http_client(settings)
    try:
        answer = client.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}}},
        )
        answer.raise_for_status()
        return [str(run["name"]) for run in answer.json()]
    finally:
        client.close()


def write_prefect(settings: Settings, objects: PrefectObjects) -> dict[str, int]:
    """Create `objects` on the stack's (new) Prefect server; returns how many of each."""
    api = credentials.stack_api(settings)
    client = credentials.http_client(settings)
    try:

        def send(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            answer = client.request(method, f"{api}{path}", json=body)
            if answer.status_code == 409:  # made by an earlier, interrupted migration
                return None
            if answer.status_code >= 400:
                # Not the answer's text: a refused block's may quote its (secret) data.
                name = (body or {}).get("name", "")
                raise StackError(
                    f"The new Prefect server refused {method} {path} {name!r} (HTTP "
                    f"{answer.status_code}); the MLflow store has moved, make the rest again by "
                    "hand (`prefect variable set`, `prefect gcl create`, `prefect block create`)."
                )
            return answer.json()

        for variable in objects.variables:
            send("POST", "/variables/", _keep(variable, "name", "value", "tags"))
        for limit in objects.limits:
            kept = _keep(limit, "name", "limit", "active", "slot_decay_per_second")
            send("POST", "/v2/concurrency_limits/", kept)
        for block in objects.blocks:
            checksum = block["block_schema"]["checksum"]
            schema = send("GET", f"/block_schemas/checksum/{checksum}")
            body = {
                "name": block["name"],
                "data": block["data"],
                "block_schema_id": schema["id"],
                "block_type_id": schema["block_type_id"],
            }
            send("POST", "/block_documents/", body)
        for automation in objects.automations:
            skip = ("id", "created", "updated", "owner_resource")
            send("POST", "/automations/", {k: v for k, v in automation.items() if k not in skip})
    finally:
        client.close()
    return {
        "variables": len(objects.variables),
        "concurrency limits": len(objects.limits),
        "blocks": len(objects.blocks),
        "automations": len(objects.automations),
    }


def _keep(item: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: item[k] for k in keys if k in item}


URI_COLUMNS = frozenset({"artifact_location", "artifact_uri", "source", "storage_location"})
"""The columns of MLflow's schema that hold artifact URIs (experiments, runs, versions, models):
only these are rewritten, never a parameter, tag or description that mentions the path."""


def rewrite(column: str, value: Any, old: str, new: str) -> Any:
    """An artifact URI under the embedded store's root, under the served scheme instead."""
    if column in URI_COLUMNS and isinstance(value, str) and value.startswith(old):
        return new + value[len(old) :]
    return value


def copy_mlflow(source_uri: str, target_uri: str, old_root: str) -> dict[str, int]:
    """Every row of the SQLite store `source_uri` into the (empty) Postgres store
    `target_uri`, both brought to this MLflow's schema first; returns the rows per table."""
    import sqlalchemy as sa
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    try:  # creates or checks each store's schema (MLflow's own migrations)
        SqlAlchemyStore(source_uri, SERVED + "/")  # type: ignore[no-untyped-call]
        SqlAlchemyStore(target_uri, SERVED + "/")  # type: ignore[no-untyped-call]
    except MlflowException as e:
        raise StackError(
            f"MLflow store not at this MLflow's schema ({e.message[:300]}): run `mlflow db "
            f"upgrade {source_uri}`, then the migration again."
        ) from e
    source, target = sa.create_engine(source_uri), sa.create_engine(target_uri)
    copied: dict[str, int] = {}
    try:
        have = sa.MetaData()
        have.reflect(source)
        want = sa.MetaData()
        want.reflect(target)
        with target.begin() as out:
            taken = out.execute(sa.text("SELECT count(*) FROM runs")).scalar_one()
            models = out.execute(sa.text("SELECT count(*) FROM registered_models")).scalar_one()
            if taken or models:
                raise StackError(
                    f"The Postgres MLflow store already holds {taken} runs and {models} "
                    "registered models: migrating would mix two registries. Drop and create "
                    "its `mlflow` database first, or keep it and skip the migration."
                )
            # The role is the cluster's superuser: foreign keys are not checked while rows
            # arrive in table order, whatever the cycles between tables.
            out.execute(sa.text("SET session_replication_role = replica"))
            tables = [t for t in want.sorted_tables if t.name != "alembic_version"]
            names = ", ".join(f'"{t.name}"' for t in tables)
            out.execute(sa.text(f"TRUNCATE {names} CASCADE"))
            with source.connect() as into:
                for table in tables:
                    if table.name not in have.tables:
                        continue
                    source_table = have.tables[table.name]
                    columns = [c.name for c in table.columns if c.name in source_table.c]
                    rows = into.execute(sa.select(*[source_table.c[c] for c in columns]))
                    count = 0
                    while batch := rows.fetchmany(CHUNK):
                        out.execute(
                            table.insert(),
                            [
                                {
                                    c: rewrite(c, v, old_root, SERVED)
                                    for c, v in zip(columns, row, strict=True)
                                }
                                for row in batch
                            ],
                        )
                        count += len(batch)
                    copied[table.name] = count
            _resume_sequences(out)
    finally:
        source.dispose()
        target.dispose()
    return copied


def _resume_sequences(connection: Any) -> None:
    """Serial columns continue after the copied ids (a new experiment gets a new id)."""
    import sqlalchemy as sa

    serial = connection.execute(
        sa.text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND (column_default LIKE 'nextval(%' "
            "OR is_identity = 'YES')"
        )
    ).all()
    for table, column in serial:
        connection.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence(:t, :c), "
                f'(SELECT COALESCE(MAX("{column}"), 0) + 1 FROM "{table}"), false)'
            ),
            {"t": table, "c": column},
        )


def copy_artifacts(source: Path, target: Path) -> int:
    """The embedded store's artifact files, at the same relative paths; returns how many."""
    if not source.is_dir():
        return 0
    shutil.copytree(source, target, dirs_exist_ok=True)
    return sum(1 for p in source.rglob("*") if p.is_file())


def to_postgres(settings: Settings, say: Say) -> dict[str, Any]:
    """Move the stack's SQLite stores to its Postgres, switch the stack to it and restart the
    servers on it; returns what moved."""
    if postgres.backend(settings) == "postgres":
        raise StackError(
            "This stack already runs on Postgres (`shipyard stack status` says so). To move "
            "the SQLite stores into it (its MLflow store must hold no runs yet): `shipyard "
            "stack up --backend sqlite`, then `shipyard stack migrate --to postgres`."
        )
    if not (services.own_prefect(settings) and services.own_mlflow(settings)):
        raise StackError(
            "PREFECT_API_URL or MLFLOW_TRACKING_URI names a server of your own: the stack "
            "migrates only the stores of the servers it runs. Unset them to migrate."
        )
    if not credentials.read_prefect_auth(settings) or not _answers(settings):
        raise StackError(
            f"The stack's Prefect server at {credentials.stack_api(settings)} does not answer: "
            "`shipyard stack up` first (its variables, limits and blocks are read from it)."
        )
    busy = runs_under_way(settings)
    if busy:
        raise StackError(
            f"{len(busy)} flow run(s) are under way on the stack's Prefect server ("
            + ", ".join(busy[:5])
            + "): what they write to MLflow meanwhile would not move. Wait for them, then run "
            "`shipyard stack migrate --to postgres` again."
        )
    # Nothing new starts while the stores are copied: `services.up` starts both again.
    for program in ("webhook", "prefect-worker"):
        supervisor.remove(settings, program)
    say("migrate: the webhook receiver and the worker are stopped while the stores move")
    objects = read_prefect(settings)
    services.start_postgres(settings, say)
    os.environ["PGPASSFILE"] = str(postgres.passfile(settings))  # this process's connections
    rows = copy_mlflow(
        settings.tracking_uri,
        postgres.url(settings, "mlflow", "psycopg"),
        settings.artifact_root.as_uri(),
    )
    rows = {table: n for table, n in rows.items() if n}
    say(f"mlflow: copied {sum(rows.values())} rows of {len(rows)} tables")
    files = copy_artifacts(settings.artifact_root, services.artifacts_dir(settings))
    say(f"mlflow: copied {files} artifact files to {services.artifacts_dir(settings)}")
    postgres.record_backend(settings, "postgres")
    urls = services.up(settings, say)
    moved = write_prefect(settings, objects)
    say("prefect: " + ", ".join(f"{n} {kind}" for kind, n in moved.items()))
    return {
        **urls,
        "mlflow_rows": rows,
        "mlflow_artifact_files": files,
        "prefect": moved,
        "not_moved": "Prefect's flow and task runs, logs, events and artifacts; deployments "
        "not in prefect.yaml. The SQLite files stay: `stack up --backend sqlite` goes back.",
    }


def _answers(settings: Settings) -> bool:
    import httpx

    try:
        return httpx.get(f"{credentials.stack_api(settings)}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
