"""Image benchmark: the old layout (one `docker build` per release, then a save and normalize of
the whole image) against the new (a shared runtime image plus one model layer written and loaded
directly), for a new version of a known model; and the digests of two clean states.

Run: `make bench-image` (after `shipyard stack up`). It releases the reference scikit-learn
project up to `build` once (a known model), then for each layout builds and pushes three new
versions (the model's metadata changed, so each is a new image), and prints the median build
and push times, and each layout's container start to ready (1 and 2 workers). Last, it removes the runtime image and every image of the model twice, and
builds the runtime and a version from scratch each time: both pushes must give one digest.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

import docker
from prefect.testing.utilities import prefect_test_harness

from shipyard import engine
from shipyard.flows.release import release
from shipyard.image.build import build, free_port, ready
from shipyard.image.context import (
    LOCK,
    NO_COMMIT_EPOCH,
    locked_requirements,
    server_wheel,
    wheelhouse,
)
from shipyard.image.layers import compose
from shipyard.image.push import push_with_retries
from shipyard.image.release import runtime_for
from shipyard.image.runtime import REPOSITORY, ensure_runtime
from shipyard.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = 3

# The release image's Dockerfile before the runtime image existed: built whole for every release.
OLD_DOCKERFILE = """\
FROM {base} AS build
ENV SOURCE_DATE_EPOCH={epoch} PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements.lock /build/requirements.lock
COPY wheels/ /build/wheels/
RUN python3 -m venv /build/pip \\
 && python3 -m venv --without-pip /opt/venv \\
 && /build/pip/bin/pip --python /opt/venv/bin/python install --no-index --no-deps --require-hashes \\
      --no-compile --find-links /build/wheels -r /build/requirements.lock \\
 && cd /opt/venv/lib/python3.11/site-packages \\
 && rm -rf onnxruntime/transformers onnxruntime/tools onnxruntime/quantization onnxruntime/datasets \\
      numpy/f2py numpy/distutils numpy/*/tests numpy/tests numpy/testing/tests \\
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {{}} +
FROM {base}
COPY --from=build /opt/venv /opt/venv
COPY model/ /model/
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \\
    SHIPYARD_SERVE_MODEL_DIR=/model SHIPYARD_SERVE_HOST=0.0.0.0 SHIPYARD_SERVE_PORT=8080
USER 10001:10001
EXPOSE 8080
LABEL ai.shipyard.model.name="digits-sklearn" ai.shipyard.bench="{stamp}"
ENTRYPOINT ["/opt/venv/bin/python", "-m", "shipyard_serving"]
"""


def new_version(bundle: Path, out: Path, stamp: str) -> list[Path]:
    """The model's files with its metadata changed: a new version's layer."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle / "model.onnx", out / "model.onnx")
    meta = json.loads((bundle / "shipyard.json").read_text())
    meta["benchmark"] = stamp
    (out / "shipyard.json").write_text(json.dumps(meta))
    return [out / "model.onnx", out / "shipyard.json"]


def old_layout(
    client: docker.DockerClient,
    settings: Settings,
    files: list[Path],
    out: Path,
    reference: str,
    stamp: str,
) -> str:
    context = out / "context"
    shutil.rmtree(context, ignore_errors=True)
    (context / "model").mkdir(parents=True)
    base = engine.base_image(settings)
    (context / "Dockerfile").write_text(
        OLD_DOCKERFILE.format(base=base, epoch=NO_COMMIT_EPOCH, stamp=stamp)
    )
    server = server_wheel(settings.wheelhouse_dir)
    (context / "requirements.lock").write_text(locked_requirements(LOCK, server))
    shutil.copytree(wheelhouse(settings.wheelhouse_dir), context / "wheels")
    shutil.copy(server, context / "wheels" / server.name)
    for path in files:
        shutil.copy(path, context / "model" / path.name)
    for path in [context, *context.rglob("*")]:
        os.utime(path, (NO_COMMIT_EPOCH, NO_COMMIT_EPOCH))
    return build(client, context, reference, NO_COMMIT_EPOCH).image_id


def start_to_ready(client: docker.DockerClient, image: str, workers: int) -> float:
    """Seconds from `docker run` to the first 200 from /v2/health/ready."""
    port = free_port()
    start = time.perf_counter()
    container = client.containers.run(
        image,
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", port)},
        environment={"SHIPYARD_SERVE_WORKERS": str(workers)},
        labels={"ai.shipyard.role": "benchmark"},
    )
    try:
        while not ready(f"http://127.0.0.1:{port}"):
            time.sleep(0.01)
        return time.perf_counter() - start
    finally:
        container.remove(force=True)


def forget(client: docker.DockerClient, repository: str) -> None:
    """The repository's images gone, but for those a running container uses (a demo endpoint)."""
    in_use = {c.image.id for c in client.containers.list() if c.image is not None}
    for image in client.images.list(name=repository):
        if image.id not in in_use:
            client.images.remove(image.id, force=True)
    client.images.prune(filters={"dangling": True})


def main() -> None:
    client = engine.engine()
    settings_default = Settings()
    login = engine.registry_login(settings_default)
    last: dict[str, str] = {}
    times: dict[str, dict[str, list[float]]] = {
        "old": {"build": [], "push": []},
        "new": {"build": [], "push": []},
    }
    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp) / "state")
        summary = release(
            source=str(ROOT / "examples" / "digits-sklearn"), until="build", settings=settings
        )
        bundle = settings.builds_dir / summary.fingerprint / "image" / "bundle"
        repository = f"{settings.registry}/shipyard/digits-sklearn"
        for layout in ("old", "new"):
            for i in range(VERSIONS + 1):  # the first warms the builder's cache and the registry
                stamp = f"{layout}-{time.time_ns()}"
                files = new_version(bundle, Path(tmp) / stamp, stamp)
                reference = f"{repository}:bench-{stamp}"
                start = time.perf_counter()
                if layout == "old":
                    old_layout(client, settings, files, Path(tmp) / stamp, reference, stamp)
                else:
                    compose(
                        client,
                        runtime_for(settings),
                        files,
                        {"ai.shipyard.bench": stamp},
                        NO_COMMIT_EPOCH,
                        reference,
                    )
                built = time.perf_counter()
                push_with_retries(client, reference, login, 3)
                pushed = time.perf_counter()
                if i:
                    times[layout]["build"].append(built - start)
                    times[layout]["push"].append(pushed - built)
                last[layout] = reference
        starts = {
            (layout, workers): [start_to_ready(client, last[layout], workers) for _ in range(5)]
            for layout in ("old", "new")
            for workers in (1, 2)
        }

        digests, runtimes, runtime_seconds = [], [], []
        for clean in ("clean-a", "clean-b"):
            forget(client, repository)
            forget(client, REPOSITORY)
            shutil.rmtree(settings.wheelhouse_dir.parent / "runtime", ignore_errors=True)
            start = time.perf_counter()
            runtime = ensure_runtime(
                client, engine.base_image(settings), settings.wheelhouse_dir, nocache=True
            )
            runtime_seconds.append(time.perf_counter() - start)
            runtimes.append(runtime.image_id)
            files = new_version(bundle, Path(tmp) / clean, "clean")
            reference = f"{repository}:bench-{clean}"
            compose(
                client, runtime, files, {"ai.shipyard.bench": "clean"}, NO_COMMIT_EPOCH, reference
            )
            digests.append(push_with_retries(client, reference, login, 3))

    print(f"\nnew version of a known model, median of {VERSIONS} (seconds)")
    print(f"{'layout':<8}{'build':>8}{'push':>8}")
    for layout in ("old", "new"):
        b, p = (statistics.median(times[layout][k]) for k in ("build", "push"))
        print(f"{layout:<8}{b:>8.2f}{p:>8.2f}")
    old_b, new_b = (statistics.median(times[k]["build"]) for k in ("old", "new"))
    print(
        f"build: new is {old_b / new_b:.0f}x faster (build = the image in the engine; the smoke test is not in it)"
    )
    print("\ncontainer start to ready, seconds (5 runs: median, best)")
    for (layout, workers), seconds in starts.items():
        print(
            f"{layout:<8}{workers} worker(s) {statistics.median(seconds):6.2f} {min(seconds):6.2f}"
        )
    print(
        f"\nruntime image from a clean engine: {runtime_seconds[0]:.1f} s, {runtime_seconds[1]:.1f} s (once per base and lock)"
    )
    print(f"runtime image ids: {runtimes[0]} {runtimes[1]} identical: {runtimes[0] == runtimes[1]}")
    print(
        f"pushed digests from two clean states: {digests[0]} {digests[1]} identical: {digests[0] == digests[1]}"
    )


if __name__ == "__main__":
    main()
