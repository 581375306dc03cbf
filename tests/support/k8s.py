"""Kubernetes objects checked against the cluster's published OpenAPI schemas (no cluster here),
and their names and labels against the API server's own rules (which the schemas leave out)."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate

KUBERNETES = "1.33"

# k8s.io/apimachinery/pkg/util/validation: IsDNS1035Label, IsDNS1123Label, IsValidLabelValue.
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def validate_core(objects: list[dict[str, Any]]) -> None:
    """Core objects against the cluster's OpenAPI schemas (strict: no unknown fields), and
    every object's name and labels against the API server's rules."""
    for obj in objects:
        validate_names(obj)
        if obj["apiVersion"].startswith("gateway.networking.k8s.io"):
            continue  # a CRD: not in the core schemas (checked by structure below)
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def validate_names(obj: dict[str, Any]) -> None:
    """A Service's name is an RFC 1035 label, any other name we render an RFC 1123 label (the
    strictest of the rules for Deployments, Secrets and routes); label values are valid."""
    name = obj["metadata"]["name"]
    rule = DNS1035 if obj["kind"] == "Service" else DNS1123_LABEL
    assert len(name) <= 63 and rule.fullmatch(name), f"{obj['kind']} name {name!r} is invalid"
    labels = dict(obj["metadata"].get("labels", {}))
    template = obj.get("spec", {}).get("template", {})
    labels.update(template.get("metadata", {}).get("labels", {}))
    labels.update(obj.get("spec", {}).get("selector", {}).get("matchLabels", {}))
    for key, value in labels.items():
        assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), f"label {key}={value!r}"
    for volume in template.get("spec", {}).get("volumes", []):
        assert DNS1123_LABEL.fullmatch(volume["name"]), f"volume name {volume['name']!r}"
