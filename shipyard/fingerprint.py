"""The release fingerprint: one sha256 over everything that determines what a release builds."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import shipyard

# What the stages themselves depend on, whatever the framework.
CORE_PACKAGES = ("onnx", "onnxruntime", "numpy")


@cache
def code_digest() -> str:
    """sha256 of Shipyard's own stage code: a changed exporter is a changed build, version or not."""
    package = Path(shipyard.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).as_posix()
        digest.update(relative.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of `names` (plus the core ones); missing ones are recorded as such."""
    versions = {"shipyard": f"{shipyard.__version__}+{code_digest()}"}
    for name in sorted({*CORE_PACKAGES, *names}):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not-installed"
    return versions


def fingerprint(
    tree_hash: str, data_hash: str, manifest_json: str, packages: dict[str, str]
) -> str:
    """sha256 over the project tree, the data, the manifest and the resolved package versions.

    The commit sha is recorded on the release but is not part of the fingerprint: a commit
    that does not touch the model project releases the same thing.
    """
    payload = json.dumps(
        {"tree": tree_hash, "data": data_hash, "manifest": manifest_json, "packages": packages},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def data_inputs(tree_hash: str, manifest_json: str, environment: str) -> str:
    """sha256 over what the `data` stage computes from when nothing else can reach it (its code
    in the sandbox, with no network): the project tree, the manifest, the environment the code
    runs in (`sandbox-<lock digest>`) and Shipyard's own code, which runs and checks it.

    The key the stage is cached by. Its output, the data's own hash, is what the release
    fingerprint holds.
    """
    payload = json.dumps(
        {
            "stage": "data",
            "tree": tree_hash,
            "manifest": manifest_json,
            "environment": environment,
            "shipyard": f"{shipyard.__version__}+{code_digest()}",
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()
