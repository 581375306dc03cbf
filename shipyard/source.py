"""Resolve a release SOURCE to an exact, recorded tree of files.

Two modes:
- a local directory with no ref: the working tree as it is (a developer iterating); the
  commit of the enclosing git repository, if any, is recorded with a `dirty` flag;
- a git URL (or a local repository with a ref): the ref is resolved to one commit in a
  local mirror and that commit's tree is extracted with `git archive`; checkouts are
  keyed by commit, so they are immutable.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shipyard.errors import SourceError
from shipyard.manifest import MANIFEST_NAME

_URL = re.compile(r"^(file|https?|ssh|git)://|^[\w.-]+@[\w.-]+:")
_IGNORED_PARTS = {".git", "__pycache__", ".shipyard", ".venv", ".pytest_cache"}


@dataclass(frozen=True)
class Checkout:
    """An exact source tree for one release."""

    source: str
    """As given, credentials removed."""
    ref: str | None
    project_dir: Path
    commit: str | None
    commit_time: int | None
    dirty: bool
    tree_hash: str


def _git(*args: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=300
        )
    except FileNotFoundError as e:
        raise SourceError("git is not installed: install it (apt-get install git).") from e
    except subprocess.CalledProcessError as e:
        raise SourceError(f"git {' '.join(args)} failed: {e.stderr.strip()}") from e
    return done.stdout.strip()


def tree_hash(project_dir: Path) -> str:
    """sha256 over the project's files (relative paths and bytes), in sorted order.

    The manifest is left out: the fingerprint holds its canonical form instead, which omits
    what does not define the model (the rollout policy, comments, key order).
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in project_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(project_dir)
        if _IGNORED_PARTS.intersection(rel.parts) or path.suffix == ".pyc":
            continue
        if rel.as_posix() == MANIFEST_NAME:
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def redact(source: str) -> str:
    """`source` without credentials (`https://user:token@host/…` → `https://host/…`): safe to record."""
    parts = urlsplit(source)
    if parts.username is None and parts.password is None:
        return source
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def is_git_url(source: str) -> bool:
    return bool(_URL.match(source)) or source.endswith(".git")


def checkout(source: str, ref: str | None, subdir: str | None, checkouts_dir: Path) -> Checkout:
    """Resolve `source` (+ `ref`, `subdir`) to a `Checkout`; git work happens in `checkouts_dir`."""
    local = Path(source).expanduser()
    if ref is None and not is_git_url(source):
        if not local.is_dir():
            raise SourceError(
                f"SOURCE {source!r} is neither a directory nor a git URL. Pass a model "
                "project directory, or a git URL (file://, https://, ssh://) with --ref."
            )
        return _working_tree(source, local, subdir)
    url = local.resolve().as_uri() if local.is_dir() else source
    return _git_checkout(source, url, ref or "HEAD", subdir, checkouts_dir)


def _project_dir(root: Path, subdir: str | None, where: str) -> Path:
    project = (root / subdir).resolve() if subdir else root.resolve()
    if subdir and not project.is_relative_to(root.resolve()):
        raise SourceError(f"--subdir {subdir!r} leaves the source tree; give a path inside it.")
    if not project.is_dir():
        raise SourceError(f"--subdir {subdir!r} does not exist in {where}.")
    return project


def _working_tree(source: str, local: Path, subdir: str | None) -> Checkout:
    project = _project_dir(local, subdir, source)
    commit = commit_time = None
    dirty = True
    try:
        commit = _git("rev-parse", "HEAD", cwd=project)
        commit_time = int(_git("log", "-1", "--format=%ct", "HEAD", cwd=project))
        dirty = bool(_git("status", "--porcelain", "--", ".", cwd=project))
    except SourceError:
        pass  # not a git repository: the tree hash alone identifies the source
    return Checkout(redact(source), None, project, commit, commit_time, dirty, tree_hash(project))


def _git_checkout(source: str, url: str, ref: str, subdir: str | None, root: Path) -> Checkout:
    mirror = root / "mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if mirror.is_dir():
        _git("remote", "update", "--prune", cwd=mirror)
    else:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        try:
            _git("clone", "--mirror", "--quiet", url, str(mirror))
        except SourceError as e:
            raise SourceError(
                f"Cannot clone {redact(source)!r}: {e}. Check the URL and that you can read it."
            ) from e
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=mirror)
    except SourceError:
        refs = _git("for-each-ref", "--format=%(refname:short)", cwd=mirror).split()
        raise SourceError(
            f"Ref {ref!r} does not exist in {redact(source)!r}. Known branches and tags: "
            f"{', '.join(refs[:20]) or '(none)'}. Pass --ref a branch, tag or commit."
        ) from None
    tree = root / commit
    if not tree.is_dir():
        done = subprocess.run(
            ["git", "archive", "--format=tar", commit], cwd=mirror, capture_output=True
        )
        if done.returncode:
            raise SourceError(
                f"git archive {commit} failed: {done.stderr.decode(errors='replace').strip()}"
            )
        # A private directory per extraction: concurrent releases of one commit never collide.
        partial = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=root))
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            tar.extractall(partial, filter="data")
        try:
            partial.rename(tree)
        except OSError:  # another release extracted the same commit first: same content
            shutil.rmtree(partial, ignore_errors=True)
    commit_time = int(_git("log", "-1", "--format=%ct", commit, cwd=mirror))
    project = _project_dir(tree, subdir, f"{redact(source)}@{commit[:12]}")
    return Checkout(redact(source), ref, project, commit, commit_time, False, tree_hash(project))
