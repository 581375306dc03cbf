"""Resolve a release SOURCE to an exact, recorded tree of files.

Two modes:
- a local directory with no ref: the working tree as it is (a developer iterating); the
  commit of the enclosing git repository, if any, is recorded with a `dirty` flag;
- a git URL (or a local repository with a ref): the ref is resolved to one commit in a
  local mirror and that commit's tree is extracted with `git archive`; checkouts are
  keyed by commit, so they are immutable.

Credentials never touch git's argv, the mirror's config, a message or a record: a URL's
user and token are split off (`split_credentials`) before any git command, and reach git
only through its environment, as an `Authorization` header scoped to that URL
(`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`,
https://git-scm.com/docs/git-config#Documentation/git-config.txt-GITCONFIGCOUNT), with
terminal prompts off. Every git error is redacted before it is raised.

With `branch`, the commit must be reachable from that branch (`git merge-base
--is-ancestor`); `tip` reads the branch's current commit, so a release can tell that a newer
push superseded it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shipyard.errors import SourceError
from shipyard.locks import exclusive
from shipyard.manifest import MANIFEST_NAME

_URL = re.compile(r"^(file|https?|ssh|git)://|^[\w.-]+@[\w.-]+:")
_IGNORED_PARTS = {".git", "__pycache__", ".shipyard", ".venv", ".pytest_cache"}
_URL_USERINFO = re.compile(r"(://)[^/@\s]+@")
_AUTH_HEADER = re.compile(r"(Authorization:\s*\w+\s+)\S+", re.IGNORECASE)
GIT_TIMEOUT_S = 300
WEB = ("http", "https")
CREDENTIALS_ENV = "SHIPYARD_SOURCE_CREDENTIALS"
"""Credentials given out of band for one run (`shipyard release URL-with-token`): a JSON object
of credential-free URL → `user:token`, in the environment of the process running the flow."""


@dataclass(frozen=True)
class GitAuth:
    """HTTP credentials for one git URL: sent as a Basic `Authorization` header, never shown."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def of_secret(cls, secret: str) -> GitAuth:
        """`user:token`, or a bare token (sent with the user `x-access-token`, which GitHub
        and GitLab accept beside a token)."""
        user, colon, token = secret.partition(":")
        return cls(user, token) if colon else cls("x-access-token", secret)

    def header(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return f"Authorization: Basic {base64.b64encode(pair).decode()}"

    def secrets(self) -> tuple[str, ...]:
        """What must never appear in a message: the token and the header that carries it."""
        return (self.password, self.header().split()[-1])


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
    branch: str | None = None
    """The branch `commit` was checked to be on (a webhook push's), or None."""
    network: bool = False
    """Whether the allow-list grants the project's `sandbox.network` (set by the source
    stage from the matched `allowed_sources` entry; True in local mode, with no list)."""


def split_credentials(source: str) -> tuple[str, GitAuth | None]:
    """`source` without user and token, and those as `GitAuth` (None when it has none).

    `https://user:token@host/…` and `https://token@host/…` carry credentials; an ssh:// user
    (`ssh://git@host/…`) is a login name, not a secret, and stays (an ssh password is split
    off, and unused: ssh authenticates with keys here)."""
    parts = urlsplit(source)
    if parts.password is None and (parts.username is None or parts.scheme not in WEB):
        return source, None
    auth = (
        GitAuth(parts.username or "", parts.password)
        if parts.password is not None
        else GitAuth.of_secret(parts.username or "")
    )
    return redact(source), auth


def out_of_band(source: str) -> GitAuth | None:
    """The credentials `CREDENTIALS_ENV` holds for `source` (credential-free), if any."""
    try:
        given = json.loads(os.environ.get(CREDENTIALS_ENV) or "{}")
    except ValueError:
        return None
    secret = given.get(source) if isinstance(given, dict) else None
    return GitAuth.of_secret(secret) if isinstance(secret, str) and secret else None


def scrub(text: str, auth: GitAuth | None = None) -> str:
    """`text` without any URL's userinfo, `Authorization` header value or `auth`'s secrets."""
    text = _AUTH_HEADER.sub(r"\1***", _URL_USERINFO.sub(r"\1***@", text))
    for secret in auth.secrets() if auth else ():
        if secret:
            text = text.replace(secret, "***")
    return text


def _env(url: str | None, auth: GitAuth | None) -> dict[str, str]:
    """git's environment: no prompt for a password or passphrase, and `auth` as a header for
    `url` only (`http.<url>.extraHeader`: no other remote a git command talks to gets it)."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never"}
    # ssh would ask for a passphrase or a host key on the terminal: fail instead.
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    if auth is not None and url is not None:
        count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
        env[f"GIT_CONFIG_KEY_{count}"] = f"http.{url}.extraHeader"
        env[f"GIT_CONFIG_VALUE_{count}"] = auth.header()
        env["GIT_CONFIG_COUNT"] = str(count + 1)
    return env


def _run(
    args: tuple[str, ...], cwd: Path | None, auth: GitAuth | None, url: str | None
) -> subprocess.CompletedProcess[bytes]:
    shown = scrub(" ".join(args), auth)
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=GIT_TIMEOUT_S,
            env=_env(url, auth),
        )
    except FileNotFoundError as e:
        raise SourceError("git is not installed: install it (apt-get install git).") from e
    except subprocess.TimeoutExpired:
        # Not chained: the exception's text is git's whole command line.
        raise SourceError(
            f"git {shown} did not finish within {GIT_TIMEOUT_S} s: check that the host answers "
            "and the repository is reachable from this machine."
        ) from None
    except subprocess.CalledProcessError as e:
        stderr = scrub(e.stderr.decode(errors="replace").strip(), auth)
        raise SourceError(f"git {shown} failed: {stderr}") from None


def _git(
    *args: str, cwd: Path | None = None, auth: GitAuth | None = None, url: str | None = None
) -> str:
    return _run(args, cwd, auth, url).stdout.decode(errors="replace").strip()


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
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def is_git_url(source: str) -> bool:
    return bool(_URL.match(source)) or source.endswith(".git")


def _url_of(source: str) -> str:
    local = Path(source).expanduser()
    return local.resolve().as_uri() if not is_git_url(source) and local.is_dir() else source


def refuse_credentials(source: str) -> None:
    """Raise unless `source` is free of credentials (its message never shows them)."""
    if split_credentials(source)[1] is not None:
        raise SourceError(
            f"SOURCE {redact(source)!r} carries credentials in its URL, which would be recorded "
            "(flow run parameters, logs, git config): pass the URL without them and give the "
            "token out of band (`shipyard release` does this itself), or name it in the "
            "allowed_sources entry's `credentials`."
        )


def checkout(
    source: str,
    ref: str | None,
    subdir: str | None,
    checkouts_dir: Path,
    *,
    auth: GitAuth | None = None,
    branch: str | None = None,
) -> Checkout:
    """Resolve `source` (+ `ref`, `subdir`) to a `Checkout`; git work happens in `checkouts_dir`.

    `source` must carry no credentials (`split_credentials` first); `auth` is sent to its
    host. With `branch`, the commit `ref` names must be reachable from that branch."""
    refuse_credentials(source)
    local = Path(source).expanduser()
    if ref is None and branch is None and not is_git_url(source):
        if not local.is_dir():
            raise SourceError(
                f"SOURCE {source!r} is neither a directory nor a git URL. Pass a model "
                "project directory, or a git URL (file://, https://, ssh://) with --ref."
            )
        return _working_tree(source, local, subdir)
    return _git_checkout(
        source, _url_of(source), ref or branch or "HEAD", subdir, checkouts_dir, auth, branch
    )


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


def _mirror(url: str, root: Path, auth: GitAuth | None) -> Path:
    """The local mirror of `url`, fetched now (created on first use). Releases that share the
    checkouts directory (two workers, two commits pushed at once) clone or fetch one mirror in
    turn, under its lock: two `git clone` into one path, or two fetches updating one ref, fail."""
    mirror = root / "mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]
    with exclusive(mirror.with_name(mirror.name + ".lock")):
        if mirror.is_dir():
            _git("remote", "update", "--prune", cwd=mirror, auth=auth, url=url)
            return mirror
        # Cloned aside, then renamed: a clone killed half-way never passes for a mirror.
        partial = Path(tempfile.mkdtemp(prefix=f".{mirror.name}-", dir=mirror.parent))
        try:
            _git("clone", "--mirror", "--quiet", url, str(partial), auth=auth, url=url)
            partial.rename(mirror)
        except SourceError as e:
            raise SourceError(
                f"Cannot clone {redact(url)!r}: {e}. Check the URL, and that its token (if it "
                "needs one) may read it."
            ) from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone already when renamed
        return mirror


def _branch_commit(mirror: Path, branch: str, where: str) -> str:
    try:
        return _git(
            "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", cwd=mirror
        )
    except SourceError:
        raise SourceError(
            f"Branch {branch!r} does not exist in {where}: the run names the branch it was "
            "pushed to; check the push (was the branch deleted?)."
        ) from None


def _extract(tar: tarfile.TarFile, dest: Path, where: str) -> None:
    """Extract `git archive`'s tar with tarfile's `data` filter; on a Python without it
    (3.11.2, Debian bookworm's, in the docker pool's worker image), with the same refusals
    for what git can store: a name or link leaving `dest`, anything but files, directories and
    links."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        names = [member.name]
        if member.issym():
            names.append(os.path.join(os.path.dirname(member.name), member.linkname))
        elif member.islnk():
            names.append(member.linkname)
        for name in names:
            normal = os.path.normpath(name)
            if os.path.isabs(name) or normal == ".." or normal.startswith("../"):
                raise SourceError(f"{where}: {member.name!r} leaves the checkout; refused.")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise SourceError(f"{where}: {member.name!r} is not a file, directory or link.")
    tar.extractall(dest)  # checked above


def _git_checkout(
    source: str,
    url: str,
    ref: str,
    subdir: str | None,
    root: Path,
    auth: GitAuth | None,
    branch: str | None,
) -> Checkout:
    where = redact(source)
    mirror = _mirror(url, root, auth)
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=mirror)
    except SourceError:
        refs = _git("for-each-ref", "--format=%(refname:short)", cwd=mirror).split()
        raise SourceError(
            f"Ref {ref!r} does not exist in {where!r}. Known branches and tags: "
            f"{', '.join(refs[:20]) or '(none)'}. Pass --ref a branch, tag or commit."
        ) from None
    if branch is not None:
        tip_now = _branch_commit(mirror, branch, repr(where))
        if commit != tip_now and not _is_ancestor(mirror, commit, tip_now):
            raise SourceError(
                f"Commit {commit} is not on branch {branch!r} of {where!r} (rule: a pushed "
                f"commit must be reachable from its branch, whose tip is {tip_now}). Release a "
                "commit of that branch, or name the branch it is on."
            )
    tree = root / commit
    if not tree.is_dir():
        archive = _run(("archive", "--format=tar", commit), mirror, None, None).stdout
        # A private directory per extraction: concurrent releases of one commit never collide.
        partial = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=root))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            _extract(tar, partial, f"{where}@{commit[:12]}")
        try:
            partial.rename(tree)
        except OSError:  # another release extracted the same commit first: same content
            shutil.rmtree(partial, ignore_errors=True)
    commit_time = int(_git("log", "-1", "--format=%ct", commit, cwd=mirror))
    project = _project_dir(tree, subdir, f"{where}@{commit[:12]}")
    return Checkout(
        where, ref, project, commit, commit_time, False, tree_hash(project), branch=branch
    )


def _is_ancestor(mirror: Path, commit: str, tip_commit: str) -> bool:
    try:
        _git("merge-base", "--is-ancestor", commit, tip_commit, cwd=mirror)
    except SourceError:
        return False  # exit 1: not an ancestor (a real error fails the next git command)
    return True


def tip(source: str, branch: str, checkouts_dir: Path, *, auth: GitAuth | None = None) -> str:
    """The commit `branch` of `source` points to now (its mirror fetched first)."""
    refuse_credentials(source)
    mirror = _mirror(_url_of(source), checkouts_dir, auth)
    return _branch_commit(mirror, branch, repr(redact(source)))
