"""The command of a docker-pool run (`python -m shipyard.stack.pool_run`): read the secrets the
pool carries for it (`SHIPYARD_ENV_FROM_BLOCKS`, `NAME=block,…`) from their Prefect Secret blocks
into this process's environment, then run Prefect's engine for the run (`python -m
prefect.engine`, the flow run named by `PREFECT__FLOW_RUN_ID`) in this same process, so that
Prefect is imported once.

A secret is never in the pool's job template, which Prefect stores in its database and shows in
its UI: only the block's name is.

Before that, a run checks that it can work where its worker started it (`check_stack`): its
engine is the stack's, and it sees the stack's directory (the engine's id, which `stack up
--pool docker` writes there, is the one the template names). A worker on another machine, or
one whose engine socket is another engine's, stops its runs at once with that said, instead of
building on an engine that does not hold the stack's images or deploying where the endpoint is
not. `python -m shipyard.stack.pool_run -- COMMAND …` runs COMMAND
instead of the engine (with the same environment), to check what a run would get.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ENV_FROM_BLOCKS = "SHIPYARD_ENV_FROM_BLOCKS"
"""`NAME=block,…`: the secret settings this command reads from Prefect Secret blocks."""
POOL_ENGINE = "SHIPYARD_POOL_ENGINE"
"""The id of the stack's engine, in the pool's template and in `ENGINE_FILE` of its stack
directory."""
ENGINE_FILE = "pool-engine"
ON_ITS_MACHINE = (
    "A docker-pool run uses the stack's engine and its state and stack directories at the same "
    "paths, so its worker must run on the stack's machine, with the stack's engine socket "
    "(workers on other machines are not supported yet). Start the worker there, or run "
    "`shipyard stack up --pool docker` again if the stack's engine was replaced."
)


def stack_mismatch(expected: str, stack_dir: Path, engine_id: str | None) -> str | None:
    """Why a run whose template names engine `expected` cannot work here, or None: `stack_dir`
    has no `ENGINE_FILE` naming it (not the stack's directory), or the engine that answers here
    (`engine_id`, None when none does) is another."""
    mark = stack_dir / ENGINE_FILE
    found = mark.read_text().strip() if mark.is_file() else None
    if found != expected:
        return (
            f"This run does not see the stack's directory: {mark} "
            f"{'is missing' if found is None else 'names another engine'}. {ON_ITS_MACHINE}"
        )
    if engine_id != expected:
        return (
            f"This run's engine ({os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}, "
            f"id {engine_id or 'none answers'}) is not the stack's (id {expected}). {ON_ITS_MACHINE}"
        )
    return None


def check_stack() -> None:
    """Stop with `stack_mismatch`'s reason when this run cannot work here (a template without
    `POOL_ENGINE` checks nothing)."""
    expected = os.environ.get(POOL_ENGINE)
    if not expected:
        return
    import docker
    from docker.errors import DockerException

    from shipyard.settings import Settings

    engine_id: str | None = None
    try:
        client = docker.from_env(timeout=30)
        try:
            engine_id = str(client.info()["ID"])
        finally:
            client.close()
    except (DockerException, OSError):  # no engine answers (requests' errors are OSErrors)
        pass
    reason = stack_mismatch(expected, Settings().stack_dir, engine_id)
    if reason:
        raise SystemExit(reason)


def load_secrets() -> list[str]:
    """Set each variable `ENV_FROM_BLOCKS` names from its Secret block; return the names."""
    spec = os.environ.pop(ENV_FROM_BLOCKS, "")
    pairs = [pair.partition("=") for pair in spec.split(",") if pair]
    if not pairs:
        return []
    from prefect.blocks.system import Secret

    for variable, _, block in pairs:
        try:
            value = Secret.load(block).get()  # type: ignore[union-attr]
        except Exception as e:  # a missing block is a ValueError; the API's errors vary
            raise SystemExit(
                f"{variable}: cannot read Prefect Secret block {block!r} ({e}). "
                "`shipyard stack up --pool docker` saves it from the environment it starts in: "
                f"run it again with {variable} set."
            ) from None
        os.environ[variable] = str(value)
    return [variable for variable, _, _ in pairs]


def main(argv: list[str]) -> None:
    check_stack()  # first: on the wrong machine, reading the blocks may fail for that reason
    load_secrets()
    if argv[:1] == ["--"] and len(argv) > 1:
        os.execvp(argv[1], argv[1:])
    from shipyard.stack import plain_http

    plain_http.skip_ca_bundle()
    sys.argv = [sys.argv[0]]
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
