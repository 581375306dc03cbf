"""The stack's own Postgres: the team backend of its Prefect and MLflow servers.

`shipyard stack up --backend postgres` runs one cluster of Debian's `postgresql` (installed
if missing) under the stack's supervisord: listening on 127.0.0.1 on its own port
(SHIPYARD_POSTGRES_PORT), password auth only (scram-sha-256, for TCP and the socket alike),
with one role, `shipyard`, owning two databases, `prefect` and `mlflow`.

The password is generated once into `postgres-password` in the stack directory (mode 600)
and reaches the servers as a libpq password file (`pgpass`, mode 600, named by PGPASSFILE,
which libpq, psycopg and asyncpg all read): no connection URL, command line, program file
or log carries it. https://www.postgresql.org/docs/15/libpq-pgpass.html

Postgres refuses to run as root. When the stack runs as root (a CI runner, a container), the
cluster runs as Debian's `postgres` user, so its data directory lives where that user can
reach it, `/var/lib/postgresql/shipyard-<id of the stack directory>` (the stack directory is
root's only); otherwise it is `postgres/` in the stack directory.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Literal

from shipyard.errors import StackError
from shipyard.settings import Settings
from shipyard.stack import state as stack_state

Say = Callable[[str], None]

Backend = Literal["sqlite", "postgres"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")
ROLE = "shipyard"
DATABASES = ("prefect", "mlflow")
SYSTEM_USER = "postgres"
"""Debian's `postgres` user, which runs the cluster when the stack runs as root."""
PG_ROOT = Path("/usr/lib/postgresql")


def backend(settings: Settings) -> Backend:
    """The backend this stack runs on: what `stack up --backend` last recorded, else SQLite."""
    recorded = stack_state.read(settings).get("backend", "sqlite")
    return "postgres" if recorded == "postgres" else "sqlite"


def parse_backend(chosen: str) -> Backend:
    """`chosen` as a backend (`stack up --backend`), or an error naming the choices."""
    if chosen == "postgres":
        return "postgres"
    if chosen == "sqlite":
        return "sqlite"
    raise StackError(
        f"Unknown backend {chosen!r}: expected one of {list(BACKENDS)} "
        "(`shipyard stack up --backend postgres`)."
    )


def record_backend(settings: Settings, chosen: str) -> Backend:
    """Record `chosen` in stack.json: later `stack up`s keep it until told otherwise. `stack
    up` records it only once the servers answer on it (`services.up`)."""
    parsed = parse_backend(chosen)
    state = stack_state.read(settings)
    state["backend"] = parsed
    stack_state.write(settings, state)
    return backend(settings)


def use_stack_mlflow(
    settings: Settings, environ: MutableMapping[str, str], chosen: Backend | None = None
) -> str | None:
    """Point this process's MLflow client at the stack's tracking server when the stack runs on
    Postgres (`chosen`, else the recorded backend) and no tracking URI is configured: the store
    is then only reachable through it (the embedded SQLite file is not the registry any more).
    Returns the URI set, if any. On SQLite, the server is named as the one that serves the
    embedded store (`serving`), which clients use while it answers."""
    if settings.mlflow_tracking_uri:
        return None
    if (chosen or backend(settings)) != "postgres":
        served = serving(settings)
        if served and not settings.mlflow_server_url:
            environ["SHIPYARD_MLFLOW_SERVER_URL"] = served
        return None
    environ["MLFLOW_TRACKING_URI"] = tracking_url(settings)
    return environ["MLFLOW_TRACKING_URI"]


def serving(settings: Settings) -> str | None:
    """The stack's MLflow server, when its program (as supervisord runs it) serves this
    process's embedded store, the same SQLite file: clients then go through it
    (`registry.store_uri`). None for another project's store, or no server."""
    from shipyard.stack import supervisor

    args = supervisor.command(settings, "mlflow-server")

    def value(flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args[:-1] else None

    if value("--backend-store-uri") != settings.tracking_uri:
        return None
    return f"http://{value('--host')}:{value('--port')}"


def tracking_url(settings: Settings) -> str:
    """The stack's MLflow tracking server."""
    return f"http://{settings.services_host}:{settings.mlflow_port}"


def _as_system_user() -> bool:
    return os.geteuid() == 0


def cluster_dir(settings: Settings) -> Path:
    """Where the cluster's data directory (`data/`) lives; see the module's docstring."""
    if _as_system_user():
        stack_id = hashlib.sha256(str(settings.stack_dir.resolve()).encode()).hexdigest()[:12]
        return Path(f"/var/lib/postgresql/shipyard-{stack_id}")
    return settings.stack_dir / "postgres"


def data_dir(settings: Settings) -> Path:
    return cluster_dir(settings) / "data"


def password_file(settings: Settings) -> Path:
    return settings.stack_dir / "postgres-password"


def passfile(settings: Settings) -> Path:
    """The libpq password file the stack's servers get as PGPASSFILE."""
    return settings.stack_dir / "pgpass"


def password(settings: Settings) -> str:
    """The role's password, generated once (mode 600); never printed."""
    stack_state.private_dir(settings)
    stack_state.create_private(password_file(settings), secrets.token_urlsafe(32) + "\n")
    secret = password_file(settings).read_text().strip()
    if not secret or any(c in secret for c in ":\\\n"):
        raise StackError(
            f"{password_file(settings)} holds no usable password (empty, or with ':' or '\\'): "
            "delete it and the cluster directory "
            f"{cluster_dir(settings)}, then run `shipyard stack up --backend postgres`."
        )
    return secret


def write_passfile(settings: Settings) -> Path:
    """`pgpass` for the role on this stack's port (libpq ignores a file others can read)."""
    line = f"127.0.0.1:{settings.postgres_port}:*:{ROLE}:{password(settings)}\n"
    stack_state.write_private(passfile(settings), line)
    return passfile(settings)


def url(settings: Settings, database: str, driver: str) -> str:
    """A SQLAlchemy URL of one of the stack's databases, without the password (PGPASSFILE)."""
    return f"postgresql+{driver}://{ROLE}@127.0.0.1:{settings.postgres_port}/{database}"


def installed_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's programs, if any."""
    found = sorted(PG_ROOT.glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def bin_dir(say: Say) -> Path:
    """The newest installed PostgreSQL's programs; Debian's `postgresql` installed if none."""
    found = installed_bin_dir()
    if found is None:
        from shipyard.stack.engine import apt_install

        apt_install("postgresql", say)
        found = installed_bin_dir()
    if found is None:
        raise StackError(
            f"No PostgreSQL server under {PG_ROOT} after installing Debian's postgresql: "
            "install it (apt-get install postgresql) and run `shipyard stack up --backend "
            "postgres` again."
        )
    return found


def _owner() -> tuple[int, int] | None:
    if not _as_system_user():
        return None
    try:
        user = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise StackError(
            f"No system user {SYSTEM_USER!r} to run Postgres as (it refuses root): Debian's "
            "postgresql package creates it; reinstall it (apt-get install --reinstall "
            "postgresql-common)."
        ) from None
    return user.pw_uid, user.pw_gid


def init_cluster(settings: Settings, say: Say) -> bool:
    """The cluster exists (initdb'd, scram only); returns whether it was created now."""
    data = data_dir(settings)
    if (data / "PG_VERSION").is_file():
        return False
    programs = bin_dir(say)
    owner = _owner()
    root = stack_state.make_private_dir(cluster_dir(settings))
    # initdb reads the password from a file: one in the cluster directory (0700, the
    # cluster's owner's), removed once read.
    staged = root / ".initdb-password"
    stack_state.write_private(staged, password(settings) + "\n")
    if owner is not None:
        for path in (root, staged):
            os.chown(path, *owner)
    try:
        done = subprocess.run(
            [
                str(programs / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                ROLE,
                "--auth",
                "scram-sha-256",
                "--pwfile",
                str(staged),
                "--encoding",
                "UTF8",
                "--locale",
                "C",
            ],
            capture_output=True,
            text=True,
            user=owner[0] if owner else None,
            group=owner[1] if owner else None,
            cwd=root,
        )
    finally:
        staged.unlink(missing_ok=True)
    if done.returncode:
        shutil.rmtree(data, ignore_errors=True)
        raise StackError(
            f"initdb of {data} failed: {done.stderr.strip()[-600:]}; fix the cause and run "
            "`shipyard stack up --backend postgres` again."
        )
    say(f"postgres: created the cluster {data} (role {ROLE}, scram-sha-256 only)")
    return True


def server_args(settings: Settings, programs: Path) -> list[str]:
    """The postmaster's command line: TCP on 127.0.0.1 only, no Unix socket."""
    return [
        str(programs / "postgres"),
        "-D",
        str(data_dir(settings)),
        "-p",
        str(settings.postgres_port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        # Prefect's server keeps a pool per process, MLflow's too.
        "-c",
        "max_connections=200",
    ]


def system_user() -> str | None:
    """The user the postmaster runs as: `postgres` when the stack runs as root, else None."""
    return SYSTEM_USER if _as_system_user() else None


def connect_args(settings: Settings, database: str = "postgres") -> dict[str, object]:
    return {
        "host": "127.0.0.1",
        "port": settings.postgres_port,
        "user": ROLE,
        "password": password(settings),
        "dbname": database,
        "connect_timeout": 3,
    }


def _connect_error(settings: Settings) -> str | None:
    """Why a connection of the stack's role fails (psycopg's message), None if it succeeds."""
    import psycopg

    try:
        with psycopg.connect(**connect_args(settings)) as connection:  # type: ignore[arg-type]
            connection.execute("SELECT 1")
        return None
    except psycopg.Error as e:
        return str(e) or type(e).__name__


def answers(settings: Settings) -> bool:
    """The cluster takes a connection of the stack's role."""
    return _connect_error(settings) is None


def _serves_here(settings: Settings) -> bool:
    """The stack's own cluster (its data directory) has started and listens on the stack's
    port: what answers there is this cluster, not another server on the same port."""
    try:
        lines = (data_dir(settings) / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    # https://www.postgresql.org/docs/15/storage-file-layout.html: line 4 is the port, line
    # 8 the postmaster's status.
    return (
        len(lines) >= 8 and lines[3] == str(settings.postgres_port) and lines[7].strip() == "ready"
    )


def password_refused(error: str) -> bool:
    """A connection error that is the server refusing the password (its sqlstate is not passed
    on for a failed connection; the cluster's messages are in English, locale C)."""
    return "password authentication failed" in error


def refusal(settings: Settings) -> str | None:
    """Why the stack's running cluster will never serve it: made with another password than
    the stack's (a cluster left from an earlier stack whose password file is gone). None when
    it answers, or is not (yet) up."""
    if not _serves_here(settings):
        return None
    error = _connect_error(settings)
    if error is None or not password_refused(error):
        return None
    return (
        f"The Postgres cluster in {cluster_dir(settings)} does not accept the stack's password: "
        f"it was made with another one than the password in {password_file(settings)} (which "
        f"the servers get through {passfile(settings)}), e.g. by an earlier stack whose "
        "password file is gone. Nothing was deleted. Either restore that earlier "
        f"{password_file(settings).name} file to {password_file(settings)}, or remove the "
        f"cluster directory {cluster_dir(settings)} (its databases with it) to start with an "
        "empty cluster."
    )


def ensure_databases(settings: Settings, say: Say) -> None:
    """`prefect` and `mlflow` exist (created, owned by the stack's role, if not)."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(**connect_args(settings), autocommit=True) as connection:  # type: ignore[arg-type]
            for name in DATABASES:
                exists = connection.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if not exists:
                    connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    say(f"postgres: created database {name}")
    except psycopg.Error as e:
        raise StackError(
            f"Creating the databases {list(DATABASES)} on 127.0.0.1:{settings.postgres_port} "
            f"failed: {e}"
        ) from e
