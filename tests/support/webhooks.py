"""A push as a git host sends it: a GitHub-style body, signed with the receiver's secret."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import httpx


def signed_push(url: str, repo: Path, sha: str, delivery: str, secret: str) -> httpx.Response:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": sha,
            "repository": {"clone_url": repo.as_uri()},
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
