"""Model projects and git repositories for tests: copies of the reference examples, real
commits, and the plain stage functions run on them."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from shipyard.manifest import Manifest, load_manifest
from shipyard.project import Dataset, load_dataset
from shipyard.training import TrainedModel, train_model

ROOT = Path(__file__).resolve().parents[2]


EXAMPLES = ROOT / "examples"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(
        repo,
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.invalid",
        "commit",
        "-q",
        "-m",
        message,
    )
    return git(repo, "rev-parse", "HEAD")


def make_repo(root: Path, example: str) -> Path:
    """A real git repository whose root is a copy of `examples/<example>`, one commit on main."""
    repo = root / f"{example}-repo"
    shutil.copytree(EXAMPLES / example, repo, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, f"Add {example}")
    return repo


def sklearn_project(
    root: Path, copy: tuple[str, ...] = ("shipyard.yaml", "data.py"), **files: str
) -> Path:
    """A project in `root/p`: the named files of examples/digits-sklearn, then `files`
    (`data="..."` writes data.py)."""
    project = root / "p"
    project.mkdir()
    for name in copy:
        (project / name).write_text((EXAMPLES / "digits-sklearn" / name).read_text())
    for stem, source in files.items():
        (project / f"{stem}.py").write_text(source)
    return project


def edit_manifest(project: Path, old: str, new: str) -> None:
    path = project / "shipyard.yaml"
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def trained(name: str, out: Path) -> tuple[Manifest, Dataset, TrainedModel]:
    project = EXAMPLES / name
    manifest = load_manifest(project)
    data = load_dataset(project, manifest)
    return manifest, data, train_model(project, manifest, data, out)


def lock_of(package: str, tmp_path: Path) -> str:
    """A real hash-locked requirement for `package`: its wheel downloaded (by this host's pip)
    and hashed."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--dest", str(wheels), package],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    name, version = wheel.name.split("-")[:2]
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return f"{name}=={version} --hash=sha256:{sha}\n"
