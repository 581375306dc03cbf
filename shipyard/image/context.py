"""The build context: Dockerfile, hash-locked wheelhouse, the server package and the model.

Every file in it has the same modification time (the commit's), so `COPY` layers depend on
content only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template

import serving
from shipyard.errors import ImageError

TEMPLATE = Path(__file__).with_name("Dockerfile.template")
LOCK = Path(serving.__file__).with_name("requirements.lock")
NO_COMMIT_EPOCH = 315532800  # 1980-01-01, for working trees outside git


@dataclass(frozen=True)
class ImageSpec:
    """What goes into the image and its labels: derived from content only."""

    model: str
    fingerprint: str
    onnx_sha256: str
    base: str
    revision: str
    source: str
    epoch: int

    @property
    def created(self) -> str:
        return datetime.fromtimestamp(self.epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dockerfile(spec: ImageSpec) -> str:
    return Template(TEMPLATE.read_text()).substitute(
        base=spec.base,
        epoch=spec.epoch,
        model=spec.model,
        revision=spec.revision,
        fingerprint=spec.fingerprint,
        created=spec.created,
        source=spec.source,
        onnx_sha256=spec.onnx_sha256,
    )


def wheelhouse(cache_dir: Path, lock: Path = LOCK) -> Path:
    """The locked wheels, downloaded on this host (containers need no index), cached by lock hash."""
    target = cache_dir / hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            "--dest",
            str(target),
            "-r",
            str(lock),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise ImageError(
            f"Downloading the locked serving wheels failed: {done.stderr.strip()[-800:]}. "
            "Check the package index is reachable, or that serving/requirements.lock is current (make lock)."
        )
    (target / ".complete").touch()
    return target


def build_context(spec: ImageSpec, model_files: list[Path], wheels: Path, out: Path) -> Path:
    """Write the context into `out` and return it."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "Dockerfile").write_text(dockerfile(spec))
    shutil.copy(LOCK, out / "requirements.lock")
    shutil.copytree(wheels, out / "wheels", ignore=shutil.ignore_patterns(".complete"))
    shutil.copytree(
        Path(serving.__file__).parent,
        out / "serving",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "requirements.*"),
    )
    (out / "model").mkdir()
    for path in model_files:
        shutil.copy(path, out / "model" / path.name)
    for path in [out, *out.rglob("*")]:
        os.utime(path, (spec.epoch, spec.epoch), follow_symlinks=False)
    return out
