"""supervisord (Supervisor, from PyPI) runs the stack's long-running host processes.

One supervisord per stack directory: `stack up` starts it if it is not running, writes one
program file per part into `supervisor.d/` and applies them (`supervisorctl update`); a program
that dies is started again (`autorestart`), and its log is rotated (10 MB, 3 backups). Parts:
dockerd and the registry when the stack starts them, the Prefect server and worker, the MLflow
server, the webhook receiver, and Postgres when the stack runs on it. After a reboot, `stack up`
starts supervisord, and with it everything it ran.

Why supervisord and not a loop of our own: restart with back-off, process groups, log rotation
and a control socket are what it has done for twenty years; `supervisorctl` is what an operator
already knows. http://supervisord.org/configuration.html
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from shipyard.errors import StackError
from shipyard.processes import short_socket_path
from shipyard.settings import Settings
from shipyard.stack import state as stack_state
from shipyard.waiting import TimedOut, wait_until

SUPERVISORD = [sys.executable, "-m", "supervisor.supervisord"]
SUPERVISORCTL = [sys.executable, "-m", "supervisor.supervisorctl"]
LOG_MAX = "10MB"
LOG_BACKUPS = 3


@dataclass(frozen=True)
class Program:
    """One supervised process: what runs, where, with which environment."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    directory: Path | None = None
    stop_group: bool = True
    """Signal the whole process group on stop (a server's workers too); not for dockerd, which
    stops its containers and containerd itself."""
    stop_wait_s: int = 30
    umask: str | None = None
    """The process's umask (`077`: what it writes is its owner's only); None: supervisord's
    (022). The stack's servers write their databases and secrets with 077; dockerd keeps
    022, which the files it makes for containers (bind-mount sources) are meant to have."""
    user: str | None = None
    """The user it runs as (supervisord, as root, switches to it); None: supervisord's own.
    Postgres refuses root."""
    stop_signal: str = "TERM"
    """Postgres takes TERM as "wait until every client has gone" (Prefect's pool never goes):
    it is stopped with INT, its fast shutdown."""


def _conf(settings: Settings) -> Path:
    return settings.stack_dir / "supervisord.conf"


def _programs_dir(settings: Settings) -> Path:
    return settings.stack_dir / "supervisor.d"


def socket(settings: Settings) -> Path:
    return short_socket_path(settings.stack_dir, "supervisor.sock")


def _quote(name: str, key: str, value: str) -> str:
    """A value of supervisord's `environment=`: double-quoted, `%` doubled (its interpolation)."""
    if any(c in value for c in '"\n\r\\'):
        raise StackError(
            f"{name}: the value of {key} holds a quote, backslash or newline, which supervisord's "
            f"environment= cannot carry: set {key} to a value without them."
        )
    return '"' + value.replace("%", "%%") + '"'


def render_program(program: Program, log: Path) -> str:
    env = ",".join(f"{k}={_quote(program.name, k, v)}" for k, v in sorted(program.env.items()))
    command = " ".join(_arg(a) for a in program.args)
    lines = [
        f"[program:{program.name}]",
        f"command={command}",
        *([f"directory={program.directory}"] if program.directory else []),
        *([f"environment={env}"] if env else []),
        *([f"umask={program.umask}"] if program.umask else []),
        *([f"user={program.user}"] if program.user else []),
        *([f"stopsignal={program.stop_signal}"] if program.stop_signal != "TERM" else []),
        "autostart=true",
        "autorestart=true",
        # Up after 2 s counts as started; a part that keeps failing sooner is given up after
        # 20 tries (FATAL in `stack status`) rather than spun on forever.
        "startsecs=2",
        "startretries=20",
        f"stopasgroup={str(program.stop_group).lower()}",
        f"killasgroup={str(program.stop_group).lower()}",
        f"stopwaitsecs={program.stop_wait_s}",
        "redirect_stderr=true",
        f"stdout_logfile={log}",
        f"stdout_logfile_maxbytes={LOG_MAX}",
        f"stdout_logfile_backups={LOG_BACKUPS}",
        "",
    ]
    return "\n".join(lines)


def _arg(arg: str) -> str:
    """supervisord splits `command=` with shlex and interpolates `%(...)s`."""
    return shlex.quote(arg).replace("%", "%%")


def _render_main(settings: Settings) -> str:
    stack = settings.stack_dir
    return "\n".join(
        [
            "[unix_http_server]",
            f"file={socket(settings)}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={stack / 'supervisord.log'}",
            f"logfile_maxbytes={LOG_MAX}",
            f"logfile_backups={LOG_BACKUPS}",
            f"pidfile={stack / 'supervisord.pid'}",
            f"childlogdir={stack}",
            "loglevel=info",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{socket(settings)}",
            "",
            "[include]",
            f"files = {_programs_dir(settings)}/*.conf",
            "",
        ]
    )


def _rpc(settings: Settings) -> Any:
    transport = SupervisorTransport(None, None, f"unix://{socket(settings)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def running(settings: Settings) -> bool:
    if not socket(settings).exists():
        return False
    try:
        return bool(_rpc(settings).supervisor.getState()["statename"] == "RUNNING")
    except (OSError, xmlrpc.client.Error):
        return False


def ensure(settings: Settings, say: Callable[[str], None]) -> None:
    """supervisord for this stack directory runs (started if not)."""
    stack_state.private_dir(settings)
    stack_state.make_private_dir(_programs_dir(settings))
    stack_state.write_private(_conf(settings), _render_main(settings))
    if running(settings):
        return
    for name in ("supervisord.log", "supervisord.pid"):  # opened by supervisord, kept 600
        _private_file(settings.stack_dir / name)
    socket(settings).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket(settings).unlink(missing_ok=True)
    done = subprocess.run(
        [*SUPERVISORD, "-c", str(_conf(settings))], capture_output=True, text=True
    )  # daemonizes: returns once it has forked
    if done.returncode:
        raise StackError(f"supervisord did not start: {done.stdout[-600:]}{done.stderr[-600:]}")
    try:
        wait_until(lambda: running(settings), 15, 0.1)
    except TimedOut:
        raise StackError(
            f"supervisord did not answer on {socket(settings)} within 15 s; see "
            f"{settings.stack_dir / 'supervisord.log'}"
        ) from None
    say(f"supervisor: started supervisord (config {_conf(settings)})")


def _private_file(path: Path) -> None:
    """A file supervisord writes (a log, its pid), created 600 before it opens it: supervisord
    creates files with its umask, 022. A log it rotates is tightened by the next `stack up`;
    the stack directory (700) keeps others out meanwhile."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, stack_state.PRIVATE_FILE)
    os.close(fd)
    os.chmod(path, stack_state.PRIVATE_FILE)


def add(settings: Settings, program: Program) -> bool:
    """Write `program`'s file and apply it; a changed program is restarted. Returns whether
    the program was added or changed (False: it already ran as written)."""
    path = _programs_dir(settings) / f"{program.name}.conf"
    log = settings.stack_dir / f"{program.name}.log"
    text = render_program(program, log)
    unchanged = path.is_file() and path.read_text() == text
    # Program files carry secrets in their environment: mode 600 from the first byte.
    stack_state.write_private(path, text)
    _private_file(log)
    _update(settings)
    if unchanged and info(settings, program.name).get("statename") in ("STOPPED", "EXITED"):
        _rpc(settings).supervisor.startProcess(program.name, False)
    return not unchanged


def remove(settings: Settings, name: str) -> None:
    (_programs_dir(settings) / f"{name}.conf").unlink(missing_ok=True)
    if running(settings):
        _update(settings)


def _update(settings: Settings) -> None:
    done = subprocess.run(
        [*SUPERVISORCTL, "-c", str(_conf(settings)), "update"], capture_output=True, text=True
    )
    if done.returncode:
        raise StackError(f"supervisorctl update failed: {done.stdout[-600:]}{done.stderr[-600:]}")


def info(settings: Settings, name: str) -> dict[str, Any]:
    """supervisord's view of one program (statename, pid, …), {} if it has no such program."""
    if not running(settings):
        return {}
    try:
        return dict(_rpc(settings).supervisor.getProcessInfo(name))
    except xmlrpc.client.Fault:
        return {}


def command(settings: Settings, name: str) -> list[str]:
    """The arguments `name`'s program file runs (what `render_program` wrote), [] if none."""
    path = _programs_dir(settings) / f"{name}.conf"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    line = next((x for x in lines if x.startswith("command=")), "command=")
    return [a.replace("%%", "%") for a in shlex.split(line.removeprefix("command="))]


def programs(settings: Settings) -> list[str]:
    return sorted(p.stem for p in _programs_dir(settings).glob("*.conf"))


def restarts(settings: Settings, name: str) -> int:
    """How often supervisord restarted `name` after it died (from supervisord's log, which
    names every unexpected exit)."""
    log = settings.stack_dir / "supervisord.log"
    pattern = re.compile(rf" exited: {re.escape(name)} \(.*not expected\)")
    count = 0
    for path in [log.with_name(f"{log.name}.{i}") for i in range(LOG_BACKUPS, 0, -1)] + [log]:
        with contextlib.suppress(OSError):
            count += sum(
                1 for line in path.read_text(errors="replace").splitlines() if pattern.search(line)
            )
    return count


def describe(settings: Settings, name: str) -> str:
    """`RUNNING pid 123, 2 restarts` as `stack status` prints it; `not supervised` if absent."""
    process = info(settings, name)
    if not process:
        return "not supervised"
    n = restarts(settings, name)
    pid = f" pid {process['pid']}" if process.get("pid") else ""
    return f"{process['statename']}{pid}, {n} restart{'s' if n != 1 else ''}"


def shutdown(settings: Settings, say: Callable[[str], None]) -> None:
    """Stop every program (each as its program file says) and supervisord itself."""
    if not running(settings):
        return
    rpc = _rpc(settings)
    # Clients before servers, dockerd last: its containers stop with it.
    order = [
        "webhook",
        "prefect-worker",
        "engine-server",
        "prefect-server",
        "mlflow-server",
        "postgres",
        "registry",
        "dockerd",
    ]
    names = sorted(programs(settings), key=lambda n: order.index(n) if n in order else -1)
    for name in names:
        with contextlib.suppress(xmlrpc.client.Fault):
            rpc.supervisor.stopProcess(name, True)
            say(f"stopped {name}")
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        rpc.supervisor.shutdown()
    with contextlib.suppress(TimedOut):
        wait_until(lambda: not running(settings), 30, 0.2)
    say("stopped supervisord")
