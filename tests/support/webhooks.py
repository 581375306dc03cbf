"""A push as a git host sends it: a GitHub-style body, signed with the receiver's secret."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import httpx

REPOSITORY = "team/digits-sklearn"
"""The name the pushes below give their repository: an `allowed_sources` entry names it."""


def allowed_env(repo: Path, model: str = "digits-sklearn") -> dict[str, str]:
    """The environment that allows `repo`'s pushes and releases (receiver and worker)."""
    entry = {"repository": REPOSITORY, "url": repo.as_uri(), "models": [model]}
    return {
        "SHIPYARD_ALLOWED_SOURCES": json.dumps([entry]),
        "SHIPYARD_ALLOWED_FILE_ROOT": str(repo.parent),
    }


def signed_push(url: str, repo: Path, sha: str, delivery: str, secret: str) -> httpx.Response:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": sha,
            "repository": {"clone_url": repo.as_uri(), "full_name": REPOSITORY},
            "pusher": {"name": "alice", "email": "alice@example.com"},
            "commits": [{"id": sha, "added": [], "modified": ["shipyard.yaml"], "removed": []}],
        }
    ).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        f"{url}/hooks/git",
        content=body,
        headers={
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": delivery,
            "x-hub-signature-256": f"sha256={signature}",
        },
        timeout=10,
    )
