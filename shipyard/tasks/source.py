"""Stage `source`: check out the exact commit (or working tree) and read its manifest, within
the trust boundary (`shipyard/trust.py`): an allowed source, a model it may release, and a
commit on the pushed branch. Nothing here runs the project's code: the manifest is YAML."""

from __future__ import annotations

import dataclasses

from prefect import task

from shipyard import trust
from shipyard.manifest import Manifest, load_manifest
from shipyard.settings import Settings
from shipyard.source import Checkout, GitAuth, out_of_band, refuse_credentials
from shipyard.source import checkout as resolve
from shipyard.source import tip as branch_tip


def _auth(source: str, grant: trust.Grant) -> GitAuth | None:
    """The caller's out-of-band credentials for `source`, else its allowed entry's token."""
    given = out_of_band(source)
    if given is not None:
        return given
    secret = trust.token(grant.entry)
    return GitAuth.of_secret(secret) if secret else None


@task(name="source")
def checkout(
    source: str,
    ref: str | None,
    subdir: str | None,
    settings: Settings,
    branch: str | None = None,
) -> tuple[Checkout, Manifest]:
    """Resolve SOURCE to an exact tree and validate its manifest; refuse a source the
    allow-list does not hold, a model its entry may not release, or (with `branch`) a commit
    not on that branch. The checkout's `network` is the entry's grant."""
    refuse_credentials(source)  # first: the allow-list's errors quote the source
    grant = trust.grant(source, settings)
    tree = resolve(
        source,
        ref,
        subdir,
        settings.checkouts_dir,
        auth=_auth(source, grant),
        branch=branch,
    )
    manifest = load_manifest(tree.project_dir)
    grant.check_model(manifest.name)
    return dataclasses.replace(tree, network=grant.network), manifest


@task(name="tip")
def still_tip(tree: Checkout, settings: Settings) -> str | None:
    """None while `tree.commit` is still the tip of `tree.branch`; else why the release is
    skipped (`<commit> is no longer the tip of <branch> (now <tip>)`)."""
    if tree.branch is None or tree.commit is None:
        return None
    now = branch_tip(
        tree.source,
        tree.branch,
        settings.checkouts_dir,
        auth=_auth(tree.source, trust.grant(tree.source, settings)),
    )
    if now == tree.commit:
        return None
    return f"{tree.commit} is no longer the tip of {tree.branch} (now {now})"
