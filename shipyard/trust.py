"""The trust boundary: which sources a release may check out, which models each may release,
which pushes become releases, and the token git sends for a source.

`Settings.allowed_sources` lists the repositories the release system trusts. Rules:

- **The list is empty** (the default): single-user local mode. A release takes any source,
  as Shipyard always did, and its project may use the network if its manifest asks; the webhook
  receiver refuses every push (403), since it would otherwise run code from anyone who can sign.
- **The list is not empty**: a release's source must be one entry's `url` (compared without
  user, trailing slash or `.git`; a local directory or file:// URL by its resolved path, which
  must also lie under `allowed_file_root`), and the manifest's `name` must be in that entry's
  `models`. The checks run in the `source` stage, which only reads YAML, so a refused source
  never runs any of its code; they hold for runs from the CLI, the UI, the API and the
  receiver alike. The entry's `network` grants the manifest's `sandbox.network`.
- The receiver matches a push by the host's repository name and releases the entry's `url`,
  never a URL from the payload: a signed payload cannot point a release elsewhere.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shipyard.errors import SourceError
from shipyard.settings import AllowedSource, Settings


@dataclass(frozen=True)
class Grant:
    """What the allow-list grants one release: the entry its source matched (None in local
    mode, where nothing is configured and everything is allowed) and the network."""

    entry: AllowedSource | None
    network: bool

    def check_model(self, model: str) -> None:
        """Raise unless the matched entry may release `model` (a manifest's `name`)."""
        if self.entry is not None and model not in self.entry.models:
            raise SourceError(
                f"Model {model!r} is not among the models {self.entry.repository} may release "
                f"({', '.join(self.entry.models)}; allowed_sources rule `models`): add it to "
                "that entry's `models` in shipyard.toml, or release from the repository that owns "
                "it."
            )


def _local_path(source: str) -> Path | None:
    """The resolved path of a local directory or file:// source; None for a remote URL."""
    parts = urlsplit(source)
    if parts.scheme == "file":
        return Path(parts.path).resolve()
    if parts.scheme or "@" in source.split("/", 1)[0]:
        return None
    return Path(source).expanduser().resolve()


def comparable(url: str) -> str:
    """`url` as the allow-list compares it: no user or password, scheme and host lowercase,
    no default port, no trailing slash or `.git`; a local path resolved."""
    local = _local_path(url)
    if local is not None:
        return local.as_uri()
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    default = {"https": 443, "http": 80, "ssh": 22}.get(parts.scheme.lower())
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    user = f"{parts.username}@" if parts.scheme == "ssh" and parts.username else ""
    path = parts.path.rstrip("/").removesuffix(".git")
    return urlunsplit((parts.scheme.lower(), f"{user}{host}{port}", path, "", ""))


def grant(source: str, settings: Settings) -> Grant:
    """The allow-list's verdict on `source` (credentials already removed); raises
    `SourceError` naming the rule when it is refused."""
    entries = settings.allowed_sources
    if not entries:
        return Grant(None, network=True)
    local = _local_path(source)
    if local is not None:
        root = settings.allowed_file_root
        if root is None or not local.is_relative_to(root.resolve()):
            raise SourceError(
                f"Source {source!r} is a local path outside allowed_file_root "
                f"({root or 'not set'}): with allowed_sources set, local sources must lie under "
                "allowed_file_root and be an entry's url. Move the repository there, or set "
                "allowed_file_root."
            )
    wanted = comparable(source)
    for entry in entries:
        if comparable(entry.url) == wanted:
            return Grant(entry, network=entry.network)
    raise SourceError(
        f"Source {source!r} is not the url of any allowed_sources entry "
        f"({', '.join(e.url for e in entries)}): add an [[allowed_sources]] entry for it in "
        "shipyard.toml (repository, url, models), or release one of those."
    )


def entry_for_repository(repository: str, settings: Settings) -> AllowedSource | None:
    """The entry for the repository a git host names in a push, or None. Compared without
    case: GitHub and GitLab treat `Team/Model` and `team/model` as one repository."""
    wanted = repository.casefold()
    return next((e for e in settings.allowed_sources if e.repository.casefold() == wanted), None)


def push_ignored(
    entry: AllowedSource,
    branch: str,
    changed: tuple[str, ...],
    truncated: bool,
    default_paths: list[str],
) -> str | None:
    """Why a push of `branch` changing `changed` starts no release under `entry`, or None.
    The entry's `paths` default to `default_paths` (the receiver's model project)."""
    if not any(fnmatch.fnmatchcase(branch, glob) for glob in entry.branches):
        return f"refs/heads/{branch} is not a watched branch ({', '.join(entry.branches)})"
    globs = entry.paths or default_paths
    if truncated:
        return None  # cannot tell which paths changed: release (a cached one costs little)
    if not any(fnmatch.fnmatch(path, glob) for path in changed for glob in globs):
        return f"no changed path matches {globs}"
    return None


def token(entry: AllowedSource | None) -> str | None:
    """The secret the entry's `credentials` names: an environment variable of that name, else
    a Prefect Secret block; None when it names none. Never logged or put in a message."""
    if entry is None or entry.credentials is None:
        return None
    if os.environ.get(entry.credentials):
        return os.environ[entry.credentials]
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(entry.credentials).get()  # type: ignore[union-attr]
    except Exception as e:
        raise SourceError(
            f"allowed_sources entry {entry.repository}: credentials {entry.credentials!r} is "
            "neither a set environment variable nor a Prefect Secret block that can be read "
            f"({type(e).__name__}). Set the variable in the worker's environment, or create "
            "the block."
        ) from e
    return str(value)
