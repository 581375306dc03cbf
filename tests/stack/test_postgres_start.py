"""`stack up --backend postgres` starting the stack's own cluster, with Debian's PostgreSQL and a
real supervisord: the backend is recorded only once Postgres and the servers on it answer, a
cluster left by an earlier stack that refuses this stack's password fails with the fix, and a
switch that fails half-way moves what it moved back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.deploy.containers import free_port
from shipyard.errors import StackError
from shipyard.settings import Settings
from shipyard.stack import postgres, services, supervisor

SHIPYARD = str(Path(sys.executable).parent / "shipyard")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A stack of its own (directory, Postgres port) that runs its own servers; its
    supervisord and cluster are removed afterwards (the cluster lives outside tmp_path when
    the stack runs as root)."""
    if postgres.installed_bin_dir() is None:
        missing = f"No PostgreSQL server under {postgres.PG_ROOT}: apt-get install postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} (CI must run these tests)")
        pytest.skip(missing)
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "SHIPYARD_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "unit")
    stack = Settings(
        stack_dir=tmp_path / "stack",
        state_dir=tmp_path / "state",
        postgres_port=free_port("127.0.0.1"),
        prefect_port=free_port("127.0.0.1"),
        mlflow_port=free_port("127.0.0.1"),
    )
    try:
        yield stack
    finally:
        supervisor.shutdown(stack, lambda _: None)
        shutil.rmtree(postgres.cluster_dir(stack), ignore_errors=True)


def recorded(settings: Settings) -> str | None:
    """The backend stack.json holds, as written (None: none recorded)."""
    if not settings.stack_file.is_file():
        return None
    return json.loads(settings.stack_file.read_text()).get("backend")


@pytest.mark.unit
def test_a_postgres_that_does_not_start_leaves_the_recorded_backend_and_says_how_to_go_back(
    settings: Settings,
) -> None:
    postgres.record_backend(settings, "sqlite")
    # A data directory the postmaster refuses (no configuration, wrong owner or modes).
    broken = postgres.data_dir(settings)
    broken.mkdir(parents=True)
    (broken / "PG_VERSION").write_text("15\n")

    with pytest.raises(StackError) as failed:
        services.up(settings, lambda _: None, "postgres")

    message = str(failed.value)
    assert message.startswith(
        f"The stack did not start on postgres, so it stays on sqlite (recorded in "
        f"{settings.stack_file}): postgres did not come up"
    )
    assert "run `shipyard stack up --backend postgres` again" in message
    assert "`shipyard stack up --backend sqlite` goes back" in message
    assert recorded(settings) == "sqlite"
    assert postgres.backend(settings) == "sqlite"
    # Nothing on the stores' side started after Postgres failed.
    assert supervisor.programs(settings) == ["postgres"]


@pytest.mark.unit
def test_postgres_is_recorded_once_it_answers_and_a_leftover_cluster_that_refuses_the_new_password_fails_with_the_fix(
    settings: Settings,
) -> None:
    said: list[str] = []
    first = services.plan(settings, "postgres")[0]
    assert first.name == "postgres" and recorded(settings) is None

    services.start_stores(settings, [first], "postgres", said.append)

    assert postgres.answers(settings)
    assert recorded(settings) == "postgres"
    assert said[-1] == f"backend: postgres, recorded in {settings.stack_file} (was sqlite)"
    old_password = postgres.password_file(settings).read_text().strip()

    # The stack directory loses its password (and the pgpass written from it) and its record;
    # the cluster stays: the next `stack up --backend postgres` generates another password.
    supervisor.shutdown(settings, lambda _: None)
    for gone in (
        postgres.password_file(settings),
        postgres.passfile(settings),
        settings.stack_file,
    ):
        gone.unlink()

    with pytest.raises(StackError) as failed:
        services.up(settings, said.append, "postgres")

    message = str(failed.value)
    new_password = postgres.password_file(settings).read_text().strip()
    assert new_password != old_password
    assert (
        f"The Postgres cluster in {postgres.cluster_dir(settings)} does not accept the stack's "
        f"password: it was made with another one than the password in "
        f"{postgres.password_file(settings)}"
    ) in message
    assert f"remove the cluster directory {postgres.cluster_dir(settings)}" in message
    assert "Nothing was deleted" in message and "(postgres is stopped" in message
    assert (
        "stays on sqlite" in message and "`shipyard stack up --backend sqlite` goes back" in message
    )
    assert old_password not in message + "\n".join(said)
    assert new_password not in message + "\n".join(said)
    # Nothing deleted, nothing recorded; the postmaster that could never serve is stopped.
    assert (postgres.data_dir(settings) / "PG_VERSION").is_file()
    assert recorded(settings) is None and postgres.backend(settings) == "sqlite"
    assert "postgres" not in supervisor.programs(settings)
    assert not (postgres.data_dir(settings) / "postmaster.pid").exists()

    # A stack still recorded on Postgres fails the same way at a plain `stack up`, and keeps
    # its record; the message says how to run on SQLite meanwhile.
    postgres.record_backend(settings, "postgres")
    with pytest.raises(StackError) as again:
        services.up(settings, said.append)
    assert str(again.value).startswith(
        f"The Postgres cluster in {postgres.cluster_dir(settings)} does not accept"
    )
    assert str(again.value).endswith(
        "Once that is fixed, run `shipyard stack up` again; `shipyard stack up --backend "
        "sqlite` runs the stack on SQLite meanwhile."
    )
    assert recorded(settings) == "postgres"


@pytest.mark.unit
def test_stack_up_refuses_a_backend_it_cannot_start_on_before_starting_or_recording_anything(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "SHIPYARD_STACK_DIR": str(tmp_path / "stack")}
    for args, expected in (
        (["--backend", "postgres", "--no-services"], "--backend postgres with --no-services"),
        (["--backend", "mysql"], "Unknown backend 'mysql'"),
    ):
        done = subprocess.run(
            [SHIPYARD, "stack", "up", *args, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert expected in json.loads(done.stdout)["error"]
        assert not (tmp_path / "stack").exists()


@pytest.mark.unit
def test_a_switch_to_postgres_that_fails_half_way_starts_prefect_on_sqlite_again(
    settings: Settings,
) -> None:
    """The stack runs on SQLite; `stack up --backend postgres` starts Postgres, but Prefect's
    server is refused by its database (connections to `prefect` are not allowed) and exits each
    time it starts. The switch gives up after its third start, not after the 90 s wait, starts
    Prefect on SQLite again (the program supervisord runs has no Postgres URL) and records
    nothing."""
    import psycopg

    said: list[str] = []
    program = settings.stack_dir / "supervisor.d" / "prefect-server.conf"
    services.start(settings, "prefect-server", said.append)  # on the recorded backend: SQLite
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in program.read_text()
    services.start_postgres(settings, said.append)
    with psycopg.connect(**postgres.connect_args(settings), autocommit=True) as connection:  # type: ignore[arg-type]
        connection.execute("ALTER DATABASE prefect ALLOW_CONNECTIONS false")
    stores = [s for s in services.plan(settings, "postgres") if s.name in services.STORE_SERVERS]

    with pytest.raises(StackError) as failed:
        services.start_stores(settings, stores, "postgres", said.append)

    message = str(failed.value)
    assert message.startswith(
        f"The stack did not start on postgres, so it stays on sqlite (recorded in "
        f"{settings.stack_file}): prefect-server did not come up ("
    ), message
    assert f", started {services.CRASH_LOOP_STARTS} times)" in message
    assert "prefect-server run on sqlite again." in message
    assert postgres.password(settings) not in message + "\n".join(said)
    assert recorded(settings) is None and postgres.backend(settings) == "sqlite"
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in program.read_text()
    assert supervisor.info(settings, "prefect-server")["statename"] == "RUNNING"
    assert "mlflow-server" not in supervisor.programs(settings)  # never moved
