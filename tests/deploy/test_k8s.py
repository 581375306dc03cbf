"""`shipyard render k8s`: objects valid against the Kubernetes schemas, weights that add up."""

from __future__ import annotations

import kubernetes_validate
import pytest

from shipyard.deploy.k8s import Track, render
from tests.support.k8s import validate_core
from tests.support.projects import ROOT

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


def test_every_pod_runs_as_the_images_non_root_user_read_only_and_unprivileged() -> None:
    objects = render(
        "digits",
        Track("stable", "3", f"r/digits@{DIGEST}"),
        Track("canary", "4", f"r/digits@sha256:{'b' * 64}"),
    )
    validate_core(objects)
    # The user the release image declares (`USER uid:gid`), not root.
    image_uid = next(
        int(line.split()[1].split(":")[0])
        for line in (ROOT / "shipyard" / "image" / "Dockerfile.template").read_text().splitlines()
        if line.startswith("USER ")
    )
    assert image_uid != 0
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == ["digits", "digits-canary"]
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": image_uid}
        [container] = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        # The root filesystem is read-only: the one writable place is an emptyDir on /tmp.
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
        assert not any(key.startswith("host") for key in pod)  # no hostNetwork/PID/IPC
        assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
