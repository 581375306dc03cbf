"""Loading ahead while a release waits on its sandbox.

A release of a new commit waits seconds for the project's own code to run in the sandbox (data,
train, export) while this process sits idle; the stages after it then spend seconds more
importing what they use (MLflow and its SQLAlchemy store, ONNX Runtime, matplotlib). The flow
names those with `expect`; the sandbox calls `idle` once its container runs, and they load in a
background thread then, once per process. A release whose stages are all cached never waits on
a sandbox, so it loads nothing it does not use.

Loading is only ever ahead of time: a stage imports what it needs as before (Python's import
lock makes it wait for a module the thread is loading), and a loader that fails here is
ignored, to fail again, with its own message, where the stage uses it.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable

Loader = str | Callable[[], object]
"""A module's name, or a function that loads something (a cache a library fills on first use)."""

_lock = threading.Lock()
_expected: list[Loader] = []
_started = False
_thread: threading.Thread | None = None


def expect(*loaders: Loader) -> None:
    """Load these, in this order, the first time the process waits (`idle`)."""
    with _lock:
        _expected.extend(loader for loader in loaders if loader not in _expected)


def idle() -> threading.Thread | None:
    """Start loading what is expected, unless it was started before; the thread, if started."""
    global _started, _thread
    with _lock:
        if _started or not _expected:
            return None
        _started = True
        loaders = list(_expected)
        thread = threading.Thread(
            target=_load, args=(loaders,), name="shipyard-warmup", daemon=True
        )
        _thread = thread
    thread.start()
    return thread


def settle() -> None:
    """Wait for the loading under way, if any: a process about to import for itself does not
    import alongside the thread (two threads importing one package tree can deadlock on
    Python's module locks, which then hands one of them a half-initialised module)."""
    with _lock:
        thread = _thread
    if thread is not None:
        thread.join()


def _load(loaders: list[Loader]) -> None:
    for loader in loaders:
        with contextlib.suppress(Exception):
            if isinstance(loader, str):
                importlib.import_module(loader)
            else:
                loader()
