"""`shipyard render k8s`: objects valid against the Kubernetes schemas, weights that add up."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from shipyard.deploy.containers import KEYS_FILE
from shipyard.deploy.k8s import Track, object_name, render
from shipyard.manifest import Resources
from tests.support.k8s import validate_core
from tests.support.projects import ROOT

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_a_stable_release_is_a_deployment_pulled_by_digest_and_its_services() -> None:
    objects = render("digits", Track("stable", "3", f"registry.example/shipyard/digits@{DIGEST}"))
    validate_core(objects)
    assert [o["kind"] for o in objects] == ["Secret", "Deployment", "Service", "Service"]
    [deployment] = of_kind(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(f"@{DIGEST}")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "v3"


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
    [deployment] = of_kind(
        render("digits", Track("stable", "3", f"r/digits@{DIGEST}")), "Deployment"
    )
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
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": image_uid,
            "runAsGroup": image_uid,
            "fsGroup": image_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        [container] = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        # The root filesystem is read-only: the one writable place is an emptyDir on /tmp; the
        # keys are a read-only file.
        assert container["volumeMounts"] == [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "api-keys", "mountPath": KEYS_FILE.rpartition("/")[0], "readOnly": True},
        ]
        assert pod["volumes"][0] == {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
        assert pod["volumes"][1]["secret"]["secretName"] == "digits-api-keys"
        assert not any(key.startswith("host") for key in pod)  # no hostNetwork/PID/IPC
        assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}


@pytest.mark.parametrize(
    "model",
    ["a.b_c", "9lives", "x", "a.", "a_", "a-", "0" * 63, "m" + "._-" * 20 + "z", "z" * 63],
)
def test_every_object_name_is_valid_for_any_valid_model_name(model: str) -> None:
    objects = render(
        model,
        Track("stable", "3", f"r/m@{DIGEST}"),
        Track("canary", "4", f"r/m@sha256:{'b' * 64}"),
    )
    validate_core(objects)  # names (RFC 1035/1123 labels) and label values, then the schemas
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(set(names)) == len(names)
    assert all(o["metadata"]["annotations"]["shipyard.ai/model"] == model for o in objects)
    services = {name for kind, name in names if kind == "Service"}
    [route] = of_kind(objects, "HTTPRoute")
    assert {r["name"] for r in route["spec"]["rules"][0]["backendRefs"]} <= services
    secrets = {name for kind, name in names if kind == "Secret"}
    for deployment in of_kind(objects, "Deployment"):
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {v["secret"]["secretName"] for v in volumes if "secret" in v} == secrets
        # the Deployment's selector picks its own pods only
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_names_are_kept_when_valid_and_distinct_when_cleaned() -> None:
    assert object_name("digits") == "digits"
    assert object_name("digits", "canary") == "digits-canary"
    cleaned = {object_name(m) for m in ["a.b_c", "a_b.c", "a.b.c", "a_b_c"]}
    assert len(cleaned) == 4 and "a-b-c" not in cleaned
    assert all(name.startswith("a-b-c-") for name in cleaned)
    long = {object_name("z" * 63), object_name("z" * 63, "canary"), object_name("z" * 62)}
    assert len(long) == 3 and all(len(name) <= 63 for name in long)


def test_the_api_keys_are_in_a_secret_mounted_as_a_file_never_in_a_deployment() -> None:
    key = "k8s-render-key-0123456789"
    objects = render(
        "a.b_c",
        Track("stable", "3", f"r/m@{DIGEST}"),
        Track("canary", "4", f"r/m@sha256:{'b' * 64}"),
        api_keys=[key],
    )
    validate_core(objects)
    [secret] = of_kind(objects, "Secret")
    assert secret["stringData"] == {"api-keys": f"{key}\n"}
    for obj in objects:
        if obj["kind"] != "Secret":
            assert key not in json.dumps(obj), obj["kind"]
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["SHIPYARD_SERVE_API_KEYS_FILE"] == KEYS_FILE
        assert "SHIPYARD_SERVE_API_KEYS" not in env
        [volume] = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert volume["secret"]["items"] == [{"key": "api-keys", "path": "api-keys"}]
        assert pod["automountServiceAccountToken"] is False


def test_requests_and_limits_come_from_deploy_resources() -> None:
    objects = render(
        "digits",
        Track("stable", "3", f"r/m@{DIGEST}"),
        resources=Resources(memory_mb=768, cpus=1.5, pids=128),
    )
    validate_core(objects)
    [deployment] = of_kind(objects, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    amounts = {"cpu": "1500m", "memory": "768Mi"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SHIPYARD_SERVE_WORKERS"] == "2"  # one per core of the limit
