"""`shipyard`: the command-line face of the release flows.

Heavy imports (Prefect, MLflow, ONNX Runtime) happen inside the commands, so `--help` is fast.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.errors import ShipyardError
from shipyard.settings import Settings

if TYPE_CHECKING:
    from shipyard.contracts import ReleaseSummary, RolloutResult
    from shipyard.stack.postgres import Backend

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
    deploy = "deploy"


class StrategyChoice(StrEnum):
    blue_green = "blue-green"
    canary = "canary"
    recreate = "recreate"


class _StageLines(logging.Handler):
    """Prints one line per stage transition: stage, state, duration."""

    def emit(self, record: logging.LogRecord) -> None:
        stage, state, seconds = (getattr(record, k, "") for k in ("stage", "state", "seconds"))
        mark = {"Running": "…", "Completed": "✓", "Cached": "↺", "Failed": "✗"}.get(str(state), "·")
        timing = "" if state == "Running" else f"{seconds:>7.2f}s"
        print(f"  {mark} {stage:<10} {state:<10}{timing}", file=sys.stderr, flush=True)


def _stack_prefect(backend: Backend | None = None) -> None:
    """Run flows on the stack's Prefect server when it is up and no other is configured, with
    the stack's credentials (also when PREFECT_API_URL names the stack's server).

    Runs then show in its UI, and share its concurrency limits with the worker's runs (a CLI
    rollout never overlaps a webhook's); otherwise Prefect starts a temporary server per run.
    MLflow is the stack's server on Postgres: the recorded backend's, or `backend` (a
    `stack up --backend` not recorded until its servers answer).
    """
    from shipyard.stack.credentials import use_stack_prefect
    from shipyard.stack.postgres import use_stack_mlflow

    use_stack_prefect(Settings(), os.environ)
    use_stack_mlflow(Settings(), os.environ, backend)


def _quiet(verbose: bool, backend: Backend | None = None) -> None:
    """Prepare a command that runs flows: its Prefect server, and logs that stay out of the way.

    The flows' imports (Prefect, then the stages' MLflow) create some 400k objects that live as
    long as the process: the collector, off until the flow starts (`_run_flow`), would walk
    them again and again for nothing (about 0.5 s of a warm release's start and exit)."""
    gc.disable()
    _stack_prefect(backend)
    # Prefect's console log would interleave with the stage lines; the UI keeps every log.
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # e.g. its schema-migration notes
    if "prefect.context" in sys.modules:
        # Prefect came imported, having read its settings before this command set them: this
        # is a fork of the stack's engine server (`shipyard.launcher`).
        import prefect.context
        import prefect.logging.configuration

        prefect.context.refresh_global_settings_context()
        prefect.logging.configuration.setup_logging()
    from shipyard.stack import plain_http

    plain_http.skip_ca_bundle()


def _fail(message: str, as_json: bool, summary: dict[str, Any] | None = None) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    if as_json:
        print(json.dumps({**(summary or {}), "status": "failed", "error": message}))
    raise typer.Exit(1)


class _ExpectedFailures(logging.Filter):
    """Keeps Prefect's traceback of a Shipyard error off the console: the CLI prints its
    message as one line, and the Prefect UI keeps the full log. Other errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ShipyardError)


def _run_flow(flow: Any, as_json: bool, verbose: bool, **parameters: Any) -> Any:
    """Run a flow with one line per stage on stderr; a failure is one clear line and exit 1."""
    _quiet(verbose)
    from shipyard.flows.stages import progress

    handler = _StageLines()
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    expected = _ExpectedFailures()
    consoles = [] if verbose else logging.getLogger().handlers  # Prefect's console handler
    for console in consoles:
        console.addFilter(expected)
    gc.freeze()  # what was imported lives until exit: later collections skip it
    gc.enable()
    try:
        return flow(**parameters)
    except ShipyardError as e:
        _fail(str(e), as_json)
    except Exception as e:  # unexpected: still one clear line and a non-zero exit
        _fail(f"{type(e).__name__}: {e}", as_json)
    finally:
        progress.removeHandler(handler)
        for console in consoles:
            console.removeFilter(expected)
    raise AssertionError("unreachable")


def _credentials_out_of_band(source: str) -> str:
    """SOURCE without its URL's user and token, which go to the in-process flow run through
    its environment (`shipyard.source.CREDENTIALS_ENV`)."""
    from shipyard.source import CREDENTIALS_ENV, split_credentials

    clean, auth = split_credentials(source)
    if auth is not None:
        os.environ[CREDENTIALS_ENV] = json.dumps({clean: f"{auth.username}:{auth.password}"})
    return clean


@app.command()
def release(
    source: Annotated[str, typer.Argument(help="Model project directory, or git URL.")],
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit (git sources).")] = None,
    subdir: Annotated[str | None, typer.Option(help="Project directory inside the source.")] = None,
    until: Annotated[Until, typer.Option(help="Stop after this stage.")] = Until.deploy,
    strategy: Annotated[
        StrategyChoice | None,
        typer.Option(help="Rollout strategy (default: the manifest's deploy.strategy)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="End with one JSON summary line.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Run the release flow on SOURCE: train, export, optimize, validate, register, build, push,
    deploy. A token in SOURCE's URL is split off and given to this process's run out of band
    (never a parameter, a log line or the mirror's config)."""
    _quiet(verbose)
    settings = Settings()
    source = _credentials_out_of_band(source)
    print(
        f"Releasing {source}{f' at {ref}' if ref else ''} (state: {settings.state_dir})",
        file=sys.stderr,
    )
    from shipyard.flows.release import release as release_flow

    summary: ReleaseSummary = _run_flow(
        release_flow,
        as_json,
        verbose,
        source=source,
        ref=ref,
        subdir=subdir,
        until=until.value,
        strategy=strategy.value if strategy else None,
        settings=settings,
    )
    version = summary.version
    print(
        f"{summary.model}: {summary.status}"
        + (f" as version {version}" + (" (reused)" if summary.reused else "") if version else "")
        + (f", variant {summary.variant}" if summary.variant else ""),
        file=sys.stderr,
    )
    shown = summary.to_json()
    for key in ("endpoint", "flow_run_url", "mlflow_run_url", "mlflow_version_url"):
        if shown.get(key):
            print(f"  {key.removesuffix('_url').replace('_', ' ')}: {shown[key]}", file=sys.stderr)
    if as_json:
        print(json.dumps(shown))


@app.command()
def status(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the model's aliases with versions and image digests, and its deployment: endpoint,
    containers with their health, traffic weights."""
    _quiet(False)
    from shipyard import registry
    from shipyard.contracts import VersionTags
    from shipyard.deploy.targets import describe  # either target

    settings = Settings()
    try:
        aliases = registry.aliases(registry.client(settings), model)
    except ShipyardError as e:
        _fail(str(e), as_json)
    deployment = describe(settings, model)
    if as_json:
        print(
            json.dumps(
                {
                    "model": model,
                    "aliases": {
                        a.alias: {"version": a.version, "source": a.source, "tags": a.tags}
                        for a in aliases
                    },
                    "deployment": deployment,
                }
            )
        )
        return
    if not aliases:
        print(f"{model}: no aliases yet")
    for a in aliases:
        tags = VersionTags.from_mlflow(a.tags)
        accuracy = f"{tags.accuracy:.6f}" if tags.accuracy is not None else "-"
        print(
            f"{a.alias:<10} v{a.version:<4} {tags.variant or '-':<10} "
            f"acc {accuracy:<9} git {(tags.git_sha or '-')[:12]:<13} "
            f"fp {(tags.fingerprint or '-')[:12]:<13} image {(tags.image_digest or '-')[:19]}"
        )
    if deployment is None:
        print("deployment: none (`shipyard release SOURCE` deploys after the push)")
        return
    print(f"endpoint   {deployment['endpoint']}  proxy {deployment['proxy']}")
    for slot in deployment["slots"]:
        print(
            f"  {slot['color']:<6} {slot['role']:<10} v{slot['version']:<4} weight "
            f"{slot['weight']:>3}  container {slot['container']} {slot['health']:<18} "
            f"proxy check {slot['proxy_check']:<8} {slot['image'].rpartition('@')[2][:19]}"
        )


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Option(help="Version number or alias.")] = "candidate",
    strategy: Annotated[StrategyChoice, typer.Option(help="Rollout strategy.")] = (
        StrategyChoice.blue_green
    ),
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Deploy a registered version (default: `candidate`); on success it becomes `champion`."""
    _quiet(verbose)
    from shipyard.flows.promote import promote as promote_flow

    result = _run_flow(
        promote_flow, as_json, verbose, model=model, version=version, strategy=strategy.value
    )
    _deployed(result, as_json)


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Serve the `previous` version again (its image by digest); swap `champion` and `previous`."""
    _quiet(verbose)
    from shipyard.flows.rollback import rollback as rollback_flow

    _deployed(_run_flow(rollback_flow, as_json, verbose, model=model), as_json)


def _deployed(result: RolloutResult, as_json: bool) -> None:
    print(
        f"{result.model}: v{result.deployed_version} serves on {result.endpoint}"
        + (f" (previous: v{result.previous_version})" if result.previous_version else ""),
        file=sys.stderr,
    )
    if as_json:
        print(json.dumps(result.to_json()))


@app.command()
def undeploy(model: Annotated[str, typer.Argument(help="Deployed model name.")]) -> None:
    """Stop serving MODEL: drain and remove its containers, stop its endpoint; `champion` becomes
    `previous`, since nothing serves it any more."""
    _quiet(False)
    from prefect.concurrency.sync import concurrency

    from shipyard import audit, registry
    from shipyard.deploy.endpoint import serving
    from shipyard.deploy.targets import undeploy as stop  # either target
    from shipyard.flows.rollout import LOCK_WAIT_S, rollout_lock

    settings = Settings()
    try:
        with audit.audited(settings, "undeploy", model, audit.who()) as what:
            # Never in the middle of a rollout of the same model.
            with concurrency(
                rollout_lock(model), occupy=1, timeout_seconds=LOCK_WAIT_S, strict=True
            ):
                served = serving(settings, model)
                stopped = stop(settings, model, _say)
            if not stopped:
                what["outcome"] = "nothing deployed"
                print(f"{model}: nothing deployed", file=sys.stderr)
                return
            what.update(version=served.version if served else None)
            registry.dethrone(registry.client(settings), model)
    except ShipyardError as e:
        _fail(str(e), False)


@app.command()
def scale(
    model: Annotated[str, typer.Argument(help="Deployed model name (target swarm).")],
    replicas: Annotated[int, typer.Argument(min=1, help="Replicas of the serving version.")],
) -> None:
    """Change the replica count of the version that serves MODEL on Swarm, without a rollout;
    returns once every replica runs and HAProxy routes to it."""
    _quiet(False)
    from prefect.concurrency.sync import concurrency

    from shipyard import audit
    from shipyard.deploy.targets import scale as scale_endpoint
    from shipyard.flows.rollout import LOCK_WAIT_S, rollout_lock

    settings = Settings()
    try:
        with audit.audited(settings, "scale", model, audit.who()) as what:
            what.update(replicas=replicas)
            with concurrency(  # never in the middle of a rollout of the same model
                rollout_lock(model), occupy=1, timeout_seconds=LOCK_WAIT_S, strict=True
            ):
                placed = scale_endpoint(settings, model, replicas, _say)
    except ShipyardError as e:
        _fail(str(e), False)
    print(f"{model}: {replicas} replica(s): " + ", ".join(f"{n} on {k}" for k, n in placed.items()))


@app.command()
def rebalance(
    model: Annotated[str, typer.Argument(help="Deployed model name (target swarm).")],
) -> None:
    """Spread the replicas of the version that serves MODEL on Swarm over the nodes ready now
    (Swarm moves none by itself, e.g. onto a node that came back): each replaced in turn, the
    new one healthy before the old one stops; no rollout, the same image."""
    _quiet(False)
    from prefect.concurrency.sync import concurrency

    from shipyard import audit
    from shipyard.deploy.targets import rebalance as rebalance_endpoint
    from shipyard.flows.rollout import LOCK_WAIT_S, rollout_lock

    settings = Settings()
    try:
        with (
            audit.audited(settings, "rebalance", model, audit.who()),
            concurrency(  # never in the middle of a rollout of the same model
                rollout_lock(model), occupy=1, timeout_seconds=LOCK_WAIT_S, strict=True
            ),
        ):
            placed = rebalance_endpoint(settings, model, _say)
    except ShipyardError as e:
        _fail(str(e), False)
    print(f"{model}: " + ", ".join(f"{n} on {k}" for k, n in placed.items()))


@app.command()
def audit(
    model: Annotated[str | None, typer.Argument(help="Only this model's entries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the audit trail: who released, promoted, rolled back, undeployed or redeployed
    what, when, and how it ended (oldest first)."""
    from shipyard import audit as trail

    for entry in trail.read(Settings(), model):
        if as_json:
            print(json.dumps(entry, sort_keys=True))
            continue
        who = entry["who"]
        by = who.get("pusher") or who.get("os_user", "?")
        via = (
            f"webhook delivery {who['webhook_delivery']}"
            if "webhook_delivery" in who
            else who.get("started_by", "")
        )
        version = f" v{entry['version']}" if "version" in entry else ""
        change = (
            f" champion v{entry.get('champion_before', '-')} → v{entry['champion_after']}"
            if "champion_after" in entry
            else ""
        )
        print(
            f"{entry['time']}  {entry['action']:<16} {entry['model']}{version}{change}  "
            f"by {by}@{who.get('host', '?')}{f' ({via})' if via else ''}: {entry['outcome']}"
        )


@app.command()
def logs(
    model: Annotated[str, typer.Argument(help="Deployed model name.")],
    tail: Annotated[int, typer.Option(help="Lines per container (per replica on Swarm).")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following.")] = False,
    color: Annotated[str | None, typer.Option(help="Only the blue or the green slot.")] = None,
) -> None:
    """Show the serving containers' logs, each line prefixed with its slot and version (and on
    the Swarm target its node)."""
    from shipyard.deploy.targets import logs as read_logs

    try:
        for line in read_logs(Settings(), model, tail, follow, color):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    except ShipyardError as e:
        _fail(str(e), False)


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
    os.execve(sys.executable, [sys.executable, "-m", "shipyard_serving"], {**os.environ, **env})


webhook_app = typer.Typer(no_args_is_help=True, help="The git webhook receiver.")
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("serve")
def webhook_serve(
    port: Annotated[
        int | None, typer.Option(help="Port (default SHIPYARD_WEBHOOK_PORT, 8090).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
) -> None:
    """Receive signed GitHub/GitLab pushes on POST /hooks/git; emit `shipyard.model.pushed`.

    Only repositories in allowed_sources (shipyard.toml, SHIPYARD_ALLOWED_SOURCES) release.
    Settings: SHIPYARD_WEBHOOK_SECRET (required), _PROJECT, _PATHS, _MAX_BODY_BYTES,
    _DELIVERIES_FILE, _BODY_TIMEOUT_S, _HEAD_TIMEOUT_S, _MAX_CONNECTIONS. The Prefect server is
    PREFECT_API_URL's.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from shipyard.deployments.webhook import WebhookSettings, serve

    overrides: dict[str, Any] = {k: v for k, v in {"port": port, "host": host}.items() if v}
    try:
        settings = WebhookSettings(**overrides)
        serve(settings)
    except ValueError as e:
        _fail(str(e), False)


render_app = typer.Typer(no_args_is_help=True, help="Render a release for other targets.")
app.add_typer(render_app, name="render")


@render_app.command("k8s")
def render_k8s(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    stable: Annotated[str, typer.Option(help="Stable version: number or alias.")] = "champion",
    canary: Annotated[
        str | None, typer.Option(help="Canary version (number or alias); none: no canary.")
    ] = None,
    weight: Annotated[int, typer.Option(min=0, max=100, help="Canary traffic %.")] = 10,
    project: Annotated[
        Path | None,
        typer.Option(
            help="Model project whose shipyard.yaml `deploy` section to render (default: the "
            "last Docker deploy's, else the defaults)."
        ),
    ] = None,
    min_replicas: Annotated[
        int | None, typer.Option(min=1, help="Override deploy.autoscale.min_replicas.")
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option(min=1, help="Override deploy.autoscale.max_replicas.")
    ] = None,
    zones: Annotated[
        bool, typer.Option("--zones", help="Also spread each track's pods over zones.")
    ] = False,
    kserve: Annotated[
        bool,
        typer.Option(
            "--kserve", help="A KServe InferenceService per track in place of its Deployment."
        ),
    ] = False,
    namespace: Annotated[str, typer.Option(help="Namespace of the objects.")] = "default",
    registry_host: Annotated[
        str | None,
        typer.Option(
            "--registry", help="Registry host the cluster pulls from (default: as pushed)."
        ),
    ] = None,
    with_keys: Annotated[
        bool,
        typer.Option(
            "--with-keys",
            help="Put SHIPYARD_SERVE_API_KEY into the rendered Secret (it is printed).",
        ),
    ] = False,
) -> None:
    """Print Kubernetes YAML for MODEL's release: a Secret, Deployments, Services, a weighted
    HTTPRoute, per track an autoscaler and a disruption budget; each server limited and scaled
    as `deploy.resources` and `deploy.autoscale` say (--project's, or the last Docker deploy's)."""
    _quiet(False)
    import yaml
    from pydantic import ValidationError

    from shipyard.contracts import VersionTags
    from shipyard.deploy import k8s
    from shipyard.flows.promote import find_version
    from shipyard.manifest import Autoscale, DeployPolicy, load_manifest

    settings = Settings()

    def track(name: str, version: str) -> k8s.Track:
        found = find_version(settings, model, version)
        image = VersionTags.from_mlflow(found.tags).pinned_image
        if image is None:
            raise ShipyardError(f"{model} v{found.version} has no pushed image to render.")
        if registry_host:
            image = f"{registry_host}/{image.split('/', 1)[1]}"
        return k8s.Track(name, str(found.version), image)

    from shipyard.deploy import state

    key = settings.serve_api_key
    if key is not None and not with_keys:
        _say("the Secret holds no API key: pass --with-keys, or fill it in the cluster")
    try:
        if project is not None:
            policy = load_manifest(project).deploy
        else:
            recorded = state.load(settings.deploy_dir, model)
            policy = recorded.policy if recorded else DeployPolicy()
        overrides = {"min_replicas": min_replicas, "max_replicas": max_replicas}
        try:
            autoscale = Autoscale.model_validate(
                {**policy.autoscale.model_dump(), **{k: v for k, v in overrides.items() if v}}
            )
        except ValidationError as e:
            given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items() if v)
            reason = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise ShipyardError(
                f"{given} over deploy.autoscale: {reason} (--min-replicas/--max-replicas)"
            ) from e
        if kserve and autoscale.metrics_adapter:
            _say("KServe scales on CPU only here: deploy.autoscale.rps_per_replica is not rendered")
        objects = k8s.render(
            model,
            track("stable", stable),
            track("canary", canary) if canary else None,
            weight,
            namespace,
            resources=policy.resources,
            api_keys=[key.get_secret_value()] if key is not None and with_keys else None,
            autoscale=autoscale,
            zones=zones,
            kserve_predictors=kserve,
        )
    except ShipyardError as e:
        _fail(str(e), False)

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # every object written out in full: no `&id001` anchors

    print(yaml.dump_all(objects, Dumper=Dumper, sort_keys=False), end="")


stack_app = typer.Typer(
    no_args_is_help=True, help="The local Docker engine, registry and base image."
)
app.add_typer(stack_app, name="stack")


def _say(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


@stack_app.command("up")
def stack_up(
    backend: Annotated[
        str | None,
        typer.Option(
            help="Where Prefect and MLflow store: sqlite (files, the default) or postgres (the "
            "stack's own cluster; MLflow serves the artifacts). Recorded once the servers answer "
            "on it: later `stack up`s keep it.",
        ),
    ] = None,
    services: Annotated[
        bool,
        typer.Option(
            "--services/--no-services",
            help="Also the Prefect server and worker, the MLflow server, the webhook receiver.",
        ),
    ] = True,
    pool: Annotated[
        str | None,
        typer.Option(
            help="Where release runs run: process (one worker, runs forked on this host, the "
            "default) or docker (each run in a container of the stack's worker image, on "
            "--workers workers; prefect-docker). Recorded: later `stack up`s keep it.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Workers of the docker pool, one run each at a time (default 2)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    nodes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="A swarm of N nodes: this engine (manager) and N-1 worker engines in containers.",
        ),
    ] = None,
) -> None:
    """Start what is missing: dockerd, a local registry with htpasswd auth, the base image; then
    a Prefect server (UI) and the workers of the pool (one process worker, or `--pool docker`'s
    N docker workers), an MLflow server (UI), the webhook receiver, and the deployments of
    prefect.yaml, all under supervisord. Every recorded endpoint serves again
    what it served (a rollout cut off by a restart is undone). Prints the URLs."""
    from shipyard.stack import postgres

    try:
        chosen = None if backend is None else postgres.parse_backend(backend)
    except ShipyardError as e:
        _fail(str(e), as_json)
    if (pool is not None or workers is not None) and not services:
        _fail(
            "--pool or --workers with --no-services: the pool's workers are services. "
            "Drop --no-services.",
            as_json,
        )
    if chosen is not None and not services:
        _fail(
            f"--backend {chosen} with --no-services: a backend is recorded once the Prefect and "
            "MLflow servers answer on it, and --no-services starts none. Drop --no-services.",
            as_json,
        )
    _quiet(False, chosen)  # the clients use the chosen backend's servers, recorded once they answer
    from shipyard.stack import engine as stack
    from shipyard.stack import services as ops

    settings = Settings()
    try:
        if pool is None and workers is not None:
            pool = ops.pool(settings).kind
        runs_on = None if pool is None else ops.parse_pool(pool, workers)
    except ShipyardError as e:
        _fail(str(e), as_json)
    print("Bringing up the stack", file=sys.stderr)
    try:
        result = stack.up(settings, _say)
        if nodes is not None:
            from shipyard.stack import nodes as swarm_nodes

            found = swarm_nodes.up(settings, nodes, result["base_image"], _say)
            result["nodes"] = [f"{n.name} ({n.role}, {n.state})" for n in found]
        if services:
            result.update(ops.up(settings, _say, chosen, runs_on))
            _stack_prefect()  # its server is up now: a cut-off rollout's lock is freed there
        result["endpoints"] = stack.recover_endpoints(settings, _say)
    except ShipyardError as e:
        _fail(str(e), as_json)
    if as_json:
        print(json.dumps(result))
        return
    endpoints = result.pop("endpoints", {})
    print("\n".join(f"{k}: {v}" for k, v in result.items()))
    for model, recovered in endpoints.items():
        print(f"endpoint {model}: {recovered}")


@stack_app.command("status")
def stack_status() -> None:
    """Show each part's health and restarts: engine, registry, base image, servers, worker,
    receiver."""
    from shipyard.stack import engine as stack
    from shipyard.stack import nodes
    from shipyard.stack import services as ops

    settings = Settings()
    print(
        json.dumps(
            {**stack.status(settings), **nodes.status(settings), **ops.status(settings)}, indent=2
        )
    )


@stack_app.command("cert")
def stack_cert(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Make (once) a local development CA and a certificate for 127.0.0.1/localhost, files 600
    in the stack directory; print their paths and the `deploy.tls` that serves HTTPS with them."""
    from shipyard.stack.certs import ensure_dev_certs

    certs, made = ensure_dev_certs(Settings())
    for line in made:
        _say(f"made {line}")
    paths = {"ca": str(certs.ca), "cert": str(certs.cert), "key": str(certs.key)}
    if as_json:
        print(json.dumps({**paths, "not_after": certs.not_after.isoformat()}))
        return
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    print(f"valid until {certs.not_after:%Y-%m-%d}; in shipyard.yaml:")
    print(f"deploy:\n  tls: {{cert: {certs.cert}, key: {certs.key}}}")
    print(f"clients trust it with the CA: curl --cacert {certs.ca} https://127.0.0.1:PORT/…")


@stack_app.command("nodes")
def stack_nodes(
    remove: Annotated[
        bool,
        typer.Option(
            "--remove", help="Remove the node containers, and leave the swarm `--nodes` made."
        ),
    ] = False,
) -> None:
    """List the swarm's nodes (`stack up --nodes N` makes them); with --remove, remove them."""
    from shipyard.stack import nodes

    settings = Settings()
    try:
        if remove:
            nodes.down(settings, _say)
        print(json.dumps(nodes.status(settings), indent=2))
    except ShipyardError as e:
        _fail(str(e), False)


@stack_app.command("migrate")
def stack_migrate(
    to: Annotated[str, typer.Option("--to", help="The backend to move to: postgres.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Move the stack's SQLite stores to its own Postgres: MLflow whole (runs, metrics, models,
    versions, aliases, artifacts), Prefect's variables, concurrency limits, blocks and
    automations; then run the servers on it. Prefect's run history stays behind."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its schema-migration notes
    from shipyard.stack import migrate

    if to != "postgres":
        _fail(f"--to {to!r}: the stack migrates only to postgres (`--to postgres`).", as_json)
    print("Migrating the stack to Postgres", file=sys.stderr)
    try:
        result = migrate.to_postgres(Settings(), _say)
    except ShipyardError as e:
        _fail(str(e), as_json)
    print(json.dumps(result) if as_json else "\n".join(f"{k}: {v}" for k, v in result.items()))


@stack_app.command("down")
def stack_down() -> None:
    """Stop what `stack up` started, and nothing else."""
    from shipyard.stack import engine as stack
    from shipyard.stack import services as ops

    settings = Settings()
    ops.down(settings, _say)
    stack.down(settings, _say)
