"""The stack worker's engine server: a process with Prefect's engine, the deployments' flows and
what their stages import (MLflow, the engine's client, ONNX) imported once, which forks each flow
run's engine on request, so a run starts in milliseconds where `python -m prefect.engine` spends
about 2 s importing, and its stages another 1.6 s.

`python -m shipyard.stack.engine_server SOCKET`, under the stack's supervisord. The process pool's
command (`services.process_pool_template`) is `engine_client.py SOCKET`: the client sends its
stdin, stdout and stderr (SCM_RIGHTS), its environment and directory; the server forks; the child
takes them, re-reads Prefect's settings from that environment (and its logging, where what that
is made from differs from the server's: `reread_prefect_settings`) and runs `prefect.engine` as
`python -m` would. The server answers `pid N`, then `exit CODE` (or
`signal N`) when the run ends. A client that dies (SIGKILL) takes its run with it, as the engine process it replaces
would. The server never starts a thread, so forking it is safe.

Code on disk newer than what the server imported (an upgrade, an edit) is never run stale: the
server answers `stale` (the client then runs `python -m prefect.engine` itself), lets its runs
finish, and exits; supervisord starts it again with the new code.

Python's own forkserver (`multiprocessing`, `set_forkserver_preload`) forks preloaded children
too, but for its own `Process` objects only: the run must be the process Prefect's worker
started and watches, with that process's descriptors, signals and exit code; hence this.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import traceback
import warnings
from importlib.resources import files
from pathlib import Path

import yaml

MAX_REQUEST = 1 << 20


def entrypoint_modules() -> list[str]:
    """The modules of the flows the stack's deployments run (package data `prefect.yaml`)."""
    spec = yaml.safe_load(files("shipyard.deployments").joinpath("prefect.yaml").read_text())
    return sorted({d["entrypoint"].split(":")[0] for d in spec["deployments"]})


STAGE_MODULES = (
    "mlflow",
    "mlflow.onnx",
    "mlflow.models",
    "docker",
    "onnx",
    "onnxruntime",
    "shipyard.registry",
    "shipyard.register",
    "shipyard.export",
    "shipyard.optimize",
    "shipyard.sandbox.container",
    "shipyard.image.release",
    "shipyard.image.push",
    "shipyard.image.rebuild",
    "shipyard.deploy.targets",
    "shipyard.deploy.endpoint",
    "shipyard.cli",
    "shipyard.launcher",
)
"""What the flows' stages import when they run (so that a CLI or a flow module starts without
them): about 1.6 s here, paid once by the server instead of by every run. None starts a
thread (a fork of a threaded process may hang)."""


def preload() -> None:
    for name in ["prefect.engine", "prefect.flow_engine", *entrypoint_modules(), *STAGE_MODULES]:
        importlib.import_module(name)


def stamps() -> dict[str, int]:
    """Every imported module's file and its modification time: what a fork would run."""
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            with contextlib.suppress(OSError):
                out[path] = os.stat(path).st_mtime_ns
    return out


def changed(before: dict[str, int]) -> bool:
    for path, mtime in before.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    """One request: its JSON (env, cwd, argv) and the client's three descriptors."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    if len(data) < 4:
        raise ValueError("short request")
    (size,) = struct.unpack("!I", data[:4])
    if size > MAX_REQUEST:
        raise ValueError(f"request of {size} bytes")
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    if len(fds) != 3:
        raise ValueError(f"{len(fds)} descriptors, expected stdin, stdout and stderr")
    return json.loads(body), fds


MODULES = ("prefect.engine", "shipyard.launcher")
"""What a client may have forked: a flow run's engine (the pool's command), or the `shipyard`
command (`shipyard.launcher`, for `shipyard release`)."""
PACKAGE = str(Path(__file__).resolve().parents[1])
"""This install's `shipyard` package: a client of another install (another checkout, another
environment) is not forked from this one's code."""


def refused(request: dict[str, object]) -> str | None:
    """Why this server does not run `request` (the client then runs it itself), or None."""
    module = request.get("module", "prefect.engine")
    if module not in MODULES:
        return f"module {module!r} is not one of {list(MODULES)}"
    if request.get("package", PACKAGE) != PACKAGE:
        return f"another install's client ({request.get('package')}; this one is {PACKAGE})"
    return None


CONSOLE_VARIABLES = frozenset(
    {"TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE",
     "TTY_INTERACTIVE", "JUPYTER_COLUMNS", "JUPYTER_LINES"}
)  # fmt: skip
"""What rich, under Prefect's console handler, reads from the environment when it is made."""


def logging_inputs() -> tuple[dict[str, str], int | None]:
    """What Prefect's logging set-up reads besides its settings: `PREFECT_LOGGING_…` variables
    (each overrides a key of the logging config), the console's variables and the config file's
    modification time."""
    from prefect.settings import PREFECT_LOGGING_SETTINGS_PATH

    try:
        stamp: int | None = PREFECT_LOGGING_SETTINGS_PATH.value().stat().st_mtime_ns
    except OSError:
        stamp = None
    read = {k: v for k, v in os.environ.items() if k.startswith("PREFECT_LOGGING_")}
    return read | {k: v for k, v in os.environ.items() if k in CONSOLE_VARIABLES}, stamp


def reread_prefect_settings(server_logging: tuple[dict[str, str], int | None]) -> None:
    """In the forked child, with the run's environment set: Prefect's settings read from it (once:
    the certificate-file choice is made on the environment first), and its logging set up again
    only if what that is made from differs from the server's, then whole (handlers, formatters
    and extra loggers made anew, not only levels changed), as a fresh `python -m prefect.engine`
    would have it. It is the same in nearly every run (the server runs with the worker's
    environment), and setting it up costs about 70 ms here, in the time before a run is
    Running."""
    import prefect.context
    import prefect.logging.configuration
    from prefect.settings.context import get_current_settings

    from shipyard.stack import plain_http

    plain_http.no_ca_in(os.environ)
    inherited = get_current_settings()  # the server's, as the fork left them
    prefect.context.refresh_global_settings_context()
    plain_http.skip_ca_bundle()  # an http:// API from a profile rather than the environment
    if get_current_settings() != inherited or logging_inputs() != server_logging:
        prefect.logging.configuration.setup_logging(incremental=False)


def run_engine(
    request: dict[str, object], fds: list[int], server_logging: tuple[dict[str, str], int | None]
) -> int:
    """In the forked child: become `python -m MODULE` (the run's engine, or the `shipyard`
    command) with the client's descriptors, directory, environment and umask. Returns its exit
    code. `server_logging` is the server's `logging_inputs()`."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(str(request["cwd"]))
    os.umask(int(request.get("umask", 0o022)))  # type: ignore[call-overload]
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
    module = str(request.get("module", "prefect.engine"))
    # The engine as `python -m` names it; the command as its script does (`shipyard`).
    name = module if module == "prefect.engine" else str(request.get("argv0", module))
    sys.argv = [name, *map(str, request["argv"])]  # type: ignore[call-overload]
    if module == "prefect.engine":  # the command re-reads them once it has set its own
        reread_prefect_settings(server_logging)
    # runpy warns that the module it runs as __main__ is imported already: here, on purpose.
    warnings.filterwarnings("ignore", f"'{module}' found in sys.modules", RuntimeWarning)
    try:
        # The engine as `python -m` runs it; the command keeps the argv[0] set above.
        runpy.run_module(module, run_name="__main__", alter_sys=module == "prefect.engine")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def decline(conn: socket.socket, fds: list[int], answer: str) -> None:
    """Tell the client to run it itself (`refused`, `stale`), and let go of its descriptors."""
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):
        conn.sendall(f"{answer}\n".encode())
    conn.close()


class Server:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[int, socket.socket] = {}
        self.stale = False
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.wake_r, self.wake_w = os.pipe()
        self.logging = logging_inputs()  # what the preloaded Prefect set its logging up from

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(self.path))
        finally:
            os.umask(old)
        self.listener.listen(32)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    def serve(self, loaded: dict[str, int]) -> None:
        while not (self.stale and not self.runs):
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    conn, _ = self.listener.accept()
                    self.handle(conn, loaded)
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                else:  # a client's connection: it said nothing more, so it is gone
                    self.client_gone(key.data)
            self.reap()

    def handle(self, conn: socket.socket, loaded: dict[str, int]) -> None:
        conn.settimeout(5)
        try:
            request, fds = receive(conn)
        except (OSError, ValueError) as e:
            print(f"engine-server: refused a request: {e}", file=sys.stderr, flush=True)
            conn.close()
            return
        reason = refused(request)
        if reason is not None:
            print(f"engine-server: not forking: {reason}", file=sys.stderr, flush=True)
            decline(conn, fds, "refused")
            return
        if self.stale or changed(loaded):
            if not self.stale:
                print("engine-server: code changed on disk; exits once its runs end", flush=True)
            self.stale = True
            decline(conn, fds, "stale")
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.child(request, fds)
        for fd in fds:
            os.close(fd)
        try:
            conn.sendall(f"pid {pid}\n".encode())
        except OSError:
            os.kill(pid, signal.SIGKILL)
        self.runs[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        if request.get("module", "prefect.engine") == "prefect.engine":
            run = dict(request["env"]).get("PREFECT__FLOW_RUN_ID", "?")  # type: ignore[call-overload]
            print(f"engine-server: flow run {run}: engine pid {pid}", flush=True)
        else:
            # The command's name only: its arguments may carry a source URL's credentials.
            command = next(iter(request["argv"]), "")  # type: ignore[call-overload]
            print(f"engine-server: shipyard {command}: pid {pid}", flush=True)

    def child(self, request: dict[str, object], fds: list[int]) -> None:
        code = 1
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            self.listener.close()
            for other in self.runs.values():
                other.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            code = run_engine(request, fds, self.logging)
        finally:
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def client_gone(self, pid: int) -> None:
        """A client that closed its connection before its run ended was killed: so is the run."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.selector.unregister(self.runs[pid])

    def reap(self) -> None:
        while self.runs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.runs.pop(pid, None)
            if conn is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn)
            # Killed by a signal: the client dies of the same one, as the engine would have.
            code = os.waitstatus_to_exitcode(status)
            answer = f"signal {-code}" if code < 0 else f"exit {code}"
            print(f"engine-server: engine pid {pid}: {answer}", flush=True)
            with contextlib.suppress(OSError):
                conn.sendall(f"{answer}\n".encode())
            conn.close()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m shipyard.stack.engine_server SOCKET")
    # The runs name the certificate file the same way before they read Prefect's settings:
    # with that, the server's settings are what a run's usually are (`reread_prefect_settings`).
    from shipyard.stack import plain_http

    plain_http.no_ca_in(os.environ)
    gc.disable()
    preload()
    gc.freeze()  # the imports' objects stay shared with every fork (copy-on-write)
    gc.enable()
    server = Server(Path(sys.argv[1]))
    if threading.active_count() != 1:
        sys.exit(f"engine-server: the preloaded modules started threads: {threading.enumerate()}")
    server.start()
    print(
        f"engine-server: {len(sys.modules)} modules loaded; listening on {server.path}", flush=True
    )
    server.serve(stamps())


if __name__ == "__main__":
    main()
