"""Base image benchmark: the stack's base built twice from clean stack directories.

Run: `make bench-base` (it needs the engine and the registry that `shipyard stack up` brings
up). Each build runs in its own fresh temporary stack directory, as on a fresh machine; they
share one .deb cache, empty before the first build (cold: every package downloaded) and filled
by it for the second (warm). It prints each build's time, size, package count and digest, and
whether the digests are equal. Both builds push to the stack's registry; the stack's own
directory and recorded base are left alone.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from shipyard import engine
from shipyard.settings import Settings
from shipyard.stack import engine as stack_engine


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    client = engine.engine()
    login = engine.registry_login(Settings())
    results = []
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-base-") as tmp:
        debs = Path(tmp) / "debs"
        for name in ("cold", "warm"):
            settings = Settings(stack_dir=Path(tmp) / name)
            start = time.perf_counter()
            built = stack_engine.build_base(settings, client, login, say, debs)
            results.append((name, time.perf_counter() - start, built))
    print(f"\n{'build':<6}{'seconds':>9}{'size MB':>9}{'packages':>10}  digest")
    for name, seconds, built in results:
        print(
            f"{name:<6}{seconds:>9.1f}{built.size_bytes / 1e6:>9.1f}{len(built.packages):>10}  "
            f"{built.reference.rpartition('@')[2]}"
        )
    print(
        "(seconds: mmdebstrap, the layer tar, import, normalize and push; cold = an empty .deb "
        "cache, warm = the cache the cold build filled)"
    )
    print(f"digests identical: {len({built.reference for _, _, built in results}) == 1}")


if __name__ == "__main__":
    main()
