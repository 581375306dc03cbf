"""`shipyard`: the command-line face of the release flows.

Heavy imports (Prefect, MLflow, ONNX Runtime) happen inside the commands, so `--help` is fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from shipyard.errors import ShipyardError
from shipyard.settings import Settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Turn every model commit into a reproducible, gated release.",
)


class Until(StrEnum):
    source = "source"
    data = "data"
    train = "train"
    export = "export"
    optimize = "optimize"
    validate = "validate"
    register = "register"
    build = "build"
    push = "push"


class _StageLines(logging.Handler):
    """Prints one line per stage transition: stage, state, duration."""

    def emit(self, record: logging.LogRecord) -> None:
        stage, state, seconds = (getattr(record, k, "") for k in ("stage", "state", "seconds"))
        mark = {"Running": "…", "Completed": "✓", "Cached": "↺", "Failed": "✗"}.get(str(state), "·")
        timing = "" if state == "Running" else f"{seconds:>7.2f}s"
        print(f"  {mark} {stage:<10} {state:<10}{timing}", file=sys.stderr, flush=True)


def _quiet(verbose: bool) -> None:
    # Prefect's console log would interleave with the stage lines; the UI keeps every log.
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # e.g. its schema-migration notes


def _fail(message: str, as_json: bool, summary: dict[str, Any] | None = None) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    if as_json:
        print(json.dumps({**(summary or {}), "status": "failed", "error": message}))
    raise typer.Exit(1)


@app.command()
def release(
    source: Annotated[str, typer.Argument(help="Model project directory, or git URL.")],
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit (git sources).")] = None,
    subdir: Annotated[str | None, typer.Option(help="Project directory inside the source.")] = None,
    until: Annotated[Until, typer.Option(help="Stop after this stage.")] = Until.push,
    as_json: Annotated[
        bool, typer.Option("--json", help="End with one JSON summary line.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Run the release flow on SOURCE: train, export, optimize, validate, register, build, push."""
    _quiet(verbose)
    settings = Settings()
    from flows.release import progress
    from flows.release import release as release_flow

    handler = _StageLines()
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    print(
        f"Releasing {source}{f' at {ref}' if ref else ''} (state: {settings.state_dir})",
        file=sys.stderr,
    )
    try:
        summary = release_flow(
            source=source, ref=ref, subdir=subdir, until=until.value, settings=settings
        )
    except ShipyardError as e:
        _fail(str(e), as_json)
    except Exception as e:  # unexpected: still one clear line and a non-zero exit
        _fail(f"{type(e).__name__}: {e}", as_json)
    finally:
        progress.removeHandler(handler)
    version = summary.get("version")
    print(
        f"{summary['model']}: {summary['status']}"
        + (
            f" as version {version}" + (" (reused)" if summary.get("reused") else "")
            if version
            else ""
        )
        + (f", variant {summary['variant']}" if summary.get("variant") else ""),
        file=sys.stderr,
    )
    for key in ("flow_run_url", "mlflow_run_url", "mlflow_version_url"):
        if summary.get(key):
            print(
                f"  {key.removesuffix('_url').replace('_', ' ')}: {summary[key]}", file=sys.stderr
            )
    if as_json:
        print(json.dumps(summary, default=str))


@app.command()
def status(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the model's aliases (candidate, champion, previous) with their versions and tags."""
    _quiet(False)
    from shipyard import registry

    settings = Settings()
    try:
        aliases = registry.aliases(registry.client(settings), model)
    except ShipyardError as e:
        _fail(str(e), as_json)
    if as_json:
        print(
            json.dumps(
                {
                    "model": model,
                    "aliases": {
                        a.alias: {"version": a.version, "source": a.source, "tags": a.tags}
                        for a in aliases
                    },
                }
            )
        )
        return
    if not aliases:
        print(f"{model}: no aliases yet")
    for a in aliases:
        tags = a.tags
        image = tags.get("image_digest", "-")[:19]
        print(
            f"{a.alias:<10} v{a.version:<4} {tags.get('variant', '-'):<10} "
            f"acc {tags.get('accuracy', '-'):<9} git {tags.get('git_sha', '-')[:12]:<13} "
            f"fp {tags.get('fingerprint', '-')[:12]:<13} image {image}"
        )


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="Bundle directory, or models:/NAME@ALIAS.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(help="Server processes (default: CPUs).")] = None,
    batching: Annotated[
        bool | None, typer.Option("--batching/--no-batching", help="Adaptive micro-batching.")
    ] = None,
) -> None:
    """Serve a model over the Open Inference Protocol (V2) and MLflow's /invocations.

    Other server settings (API keys, limits, timeouts) come from SHIPYARD_SERVE_* variables.
    """
    from shipyard.bundle import materialize

    try:
        model_dir = materialize(target, Settings())
    except ShipyardError as e:
        _fail(str(e), False)
    env = {
        "SHIPYARD_SERVE_MODEL_DIR": str(model_dir.resolve()),
        "SHIPYARD_SERVE_PORT": str(port),
        "SHIPYARD_SERVE_HOST": host,
    }
    if workers is not None:
        env["SHIPYARD_SERVE_WORKERS"] = str(workers)
    if batching is not None:
        env["SHIPYARD_SERVE_BATCHING"] = str(batching).lower()
    print(
        f"Serving {model_dir} on http://{host}:{port} (V2: /v2/models/…; MLflow: /invocations)",
        file=sys.stderr,
        flush=True,
    )
    # A fresh interpreter: the server carries neither MLflow nor Prefect in its heap.
    os.execve(sys.executable, [sys.executable, "-m", "serving"], {**os.environ, **env})


stack_app = typer.Typer(
    no_args_is_help=True, help="The local Docker engine, registry and base image."
)
app.add_typer(stack_app, name="stack")


def _say(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


@stack_app.command("up")
def stack_up(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Start what is missing: dockerd, a local registry with htpasswd auth, the base image."""
    from shipyard import stack

    print("Bringing up the stack", file=sys.stderr)
    try:
        result = stack.up(Settings(), _say)
    except ShipyardError as e:
        _fail(str(e), as_json)
    print(json.dumps(result) if as_json else "\n".join(f"{k}: {v}" for k, v in result.items()))


@stack_app.command("status")
def stack_status() -> None:
    """Show the engine, the registry and the base image."""
    from shipyard import stack

    print(json.dumps(stack.status(Settings()), indent=2))


@stack_app.command("down")
def stack_down() -> None:
    """Stop what `stack up` started, and nothing else."""
    from shipyard import stack

    stack.down(Settings(), _say)
