"""Kubernetes objects checked against the cluster's published OpenAPI schemas (no cluster here),
and their names and labels against the API server's own rules (which the schemas leave out).

Objects of a CRD (Gateway API's HTTPRoute, KServe's InferenceService) are checked against the
CRD's own `openAPIV3Schema`, vendored in `schemas/` from the project's release (each file names
its source URL, commit and the sha256 of the CRD file it was taken from), strictly: an unknown
field is an error, as `kubectl apply` (server-side field validation `Strict`) makes it.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES = "1.33"

# k8s.io/apimachinery/pkg/util/validation: IsDNS1035Label, IsDNS1123Label, IsValidLabelValue.
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

SCHEMAS = Path(__file__).parent / "schemas"
CRDS = {
    "gateway.networking.k8s.io/v1": "gateway.networking.k8s.io_v1_httproute.json",
    "serving.kserve.io/v1beta1": "serving.kserve.io_v1beta1_inferenceservice.json",
}
"""apiVersion → the vendored schema of the one kind Shipyard renders of it."""


def validate_core(objects: list[dict[str, Any]]) -> None:
    """Core objects against the cluster's OpenAPI schemas (strict: no unknown fields), and
    every object's name and labels against the API server's rules."""
    for obj in objects:
        validate_names(obj)
        if obj["apiVersion"] in CRDS:
            validate_crd(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def validate_crd(obj: dict[str, Any]) -> None:
    """An object of a CRD against the CRD's published schema, unknown fields rejected."""
    validator = _crd_validator(CRDS[obj["apiVersion"]])
    assert obj["kind"] == validator.schema["x-shipyard-kind"], obj["kind"]
    validator.validate(obj)


@functools.cache
def _crd_validator(file: str) -> jsonschema.Draft4Validator:
    vendored = json.loads((SCHEMAS / file).read_text())
    schema = _strict(vendored["openAPIV3Schema"])
    schema["x-shipyard-kind"] = vendored["kind"]
    return jsonschema.Draft4Validator(schema)


def _strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties
    and does not keep unknown fields (`x-kubernetes-preserve-unknown-fields`)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {
        k: {name: _strict(s) for name, s in v.items()} if k == "properties" else _strict(v)
        for k, v in schema.items()
    }
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


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
