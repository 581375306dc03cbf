"""The command of a docker-pool run (`python -m shipyard.stack.pool_run`): read the secrets the
pool carries for it (`SHIPYARD_ENV_FROM_BLOCKS`, `NAME=block,…`) from their Prefect Secret blocks
into this process's environment, then run Prefect's engine for the run (`python -m
prefect.engine`, the flow run named by `PREFECT__FLOW_RUN_ID`) in this same process, so that
Prefect is imported once.

A secret is never in the pool's job template, which Prefect stores in its database and shows in
its UI: only the block's name is. `python -m shipyard.stack.pool_run -- COMMAND …` runs COMMAND
instead of the engine (with the same environment), to check what a run would get.
"""

from __future__ import annotations

import os
import runpy
import sys

ENV_FROM_BLOCKS = "SHIPYARD_ENV_FROM_BLOCKS"
"""`NAME=block,…`: the secret settings this command reads from Prefect Secret blocks."""


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
    load_secrets()
    if argv[:1] == ["--"] and len(argv) > 1:
        os.execvp(argv[1], argv[1:])
    from shipyard.stack import plain_http

    plain_http.skip_ca_bundle()
    sys.argv = [sys.argv[0]]
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
