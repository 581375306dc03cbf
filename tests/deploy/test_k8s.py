"""`shipyard render k8s`: objects valid against the Kubernetes schemas, weights that add up."""

from __future__ import annotations

import kubernetes_validate
import pytest

from shipyard.deploy.k8s import Track, render
from tests.support.k8s import validate_core

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64


def test_a_stable_release_is_a_deployment_pulled_by_digest_and_its_services() -> None:
    objects = render("digits", Track("stable", "3", f"registry.example/shipyard/digits@{DIGEST}"))
    validate_core(objects)
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "Service"]
    container = objects[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(f"@{DIGEST}")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert objects[0]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "v3"


def test_a_canary_gets_its_own_deployment_service_and_route_weight() -> None:
    objects = render(
        "digits",
        Track("stable", "3", f"r/digits@{DIGEST}"),
        Track("canary", "4", f"r/digits@sha256:{'b' * 64}"),
        weight=20,
        replicas=4,
    )
    validate_core(objects)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert by_name[("Deployment", "digits-canary")]["spec"]["replicas"] == 1
    route = by_name[("HTTPRoute", "digits")]["spec"]["rules"][0]["backendRefs"]
    assert {r["name"]: r["weight"] for r in route} == {"digits-stable": 80, "digits-canary": 20}
    for ref in route:  # every backend the route names exists as a Service
        assert ("Service", ref["name"]) in by_name


def test_a_broken_object_is_caught_by_the_schema_check() -> None:
    [deployment, *_] = render("digits", Track("stable", "3", f"r/digits@{DIGEST}"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core([deployment])
    with pytest.raises(ValueError, match="canary weight must be 0..100 %, got 120"):
        render("digits", Track("stable", "3", "r"), Track("canary", "4", "r"), weight=120)
