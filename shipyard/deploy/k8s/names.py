"""Object names, labels and metadata: valid for any model name, distinct for distinct models."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

LABEL_MAX = 63
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
"""RFC 1035 label (Service names need it; it is also an RFC 1123 label and a label value)."""


@dataclass(frozen=True)
class Track:
    name: str
    """`stable` or `canary`."""
    version: str
    image: str
    """repository@sha256:… as a cluster pulls it."""


def object_name(model: str, suffix: str = "", limit: int = LABEL_MAX) -> str:
    """`model[-suffix]` as a valid object name, unchanged when it already is one; otherwise
    cleaned (`.`/`_` → `-`, a leading letter, at most `limit` characters) with 8 hex digits of
    the original's sha256, so that distinct models keep distinct names."""
    wanted = f"{model}-{suffix}" if suffix else model
    if len(wanted) <= limit and _DNS_LABEL.fullmatch(wanted):
        return wanted
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:8]
    clean = re.sub(r"[^a-z0-9-]", "-", wanted.lower())
    if not clean[:1].isalpha():
        clean = f"m-{clean}"
    head = clean[: limit - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def workload_name(model: str, track: str, limit: int = LABEL_MAX) -> str:
    """The stable track's workload takes the model's name; the canary's is `<model>-canary`."""
    return (
        object_name(model, limit=limit) if track == "stable" else object_name(model, track, limit)
    )


def model_labels(model: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": object_name(model),
        "app.kubernetes.io/managed-by": "shipyard",
    }


def track_selector(model: str, track: str) -> dict[str, str]:
    """The labels that pick one track's pods (Deployment, Service, HPA's target, PDB, spread)."""
    return {"app.kubernetes.io/name": object_name(model), "shipyard.ai/track": track}


def pod_labels(model: str, track: Track) -> dict[str, str]:
    return {
        **model_labels(model),
        "app.kubernetes.io/version": f"v{track.version}",
        "shipyard.ai/track": track.name,
    }


def metadata(model: str, name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {"shipyard.ai/model": model},
    }
