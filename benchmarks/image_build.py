"""Image benchmark: size, cold and cached build times, and the digests of two clean builds.

Run: `make bench-image` (after `shipyard stack up`). It releases the reference scikit-learn
project up to `build` twice from fresh state directories, removing the model's local images
and the builder's cache before each (cold), then builds once more on a warm cache (cached),
and pushes each result to compare digests.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

from prefect.testing.utilities import prefect_test_harness

from shipyard import engine
from shipyard.flows.release import release
from shipyard.image.push import push_with_retries
from shipyard.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def forget(client, repository: str) -> None:  # type: ignore[no-untyped-def]
    for image in client.images.list(name=repository):
        client.images.remove(image.id, force=True)
    client.images.prune(filters={"dangling": True})


def main() -> None:
    client = engine.engine()
    credentials = engine.registry_login(Settings())
    results = []
    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        for name in ("clean-a", "clean-b", "cached"):
            settings = Settings(state_dir=Path(tmp) / ("clean-b" if name == "cached" else name))
            if name != "cached":
                forget(client, f"{settings.registry}/shipyard/digits-sklearn")
            release(
                source=str(ROOT / "examples" / "digits-sklearn"),
                until="register",
                settings=settings,
            )
            start = time.perf_counter()
            summary = release(
                source=str(ROOT / "examples" / "digits-sklearn"), until="build", settings=settings
            )
            seconds = time.perf_counter() - start  # build + smoke test (the rest is cached)
            digest = push_with_retries(client, summary.image, credentials, 3)
            results.append((name, seconds, summary.image_size_bytes, digest))
    print(f"\n{'build':<10}{'seconds':>9}{'size MB':>9}  digest")
    for name, seconds, size, digest in results:
        print(f"{name:<10}{seconds:>9.1f}{size / 1e6:>9.1f}  {digest}")
    print(
        "(seconds: the release from `register` to a built, smoke-tested image; "
        "cold = no local image or build cache, the base pulled from the registry)"
    )
    same = len({r[3] for r in results}) == 1
    print(f"digests identical: {same}")


if __name__ == "__main__":
    main()
