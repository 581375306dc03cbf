"""`shipyard render k8s`: objects valid against the Kubernetes schemas (and the CRDs' own),
weights that add up, tracks that scale without losing the split."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shipyard.deploy.containers import KEYS_FILE
from shipyard.deploy.k8s import Track, object_name, render
from shipyard.errors import ManifestError
from shipyard.manifest import Autoscale, Resources, parse_manifest
from tests.support.k8s import DNS1035, validate_core
from tests.support.projects import ROOT

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_a_stable_release_is_a_deployment_pulled_by_digest_and_its_services() -> None:
    objects = render("digits", Track("stable", "3", f"registry.example/shipyard/digits@{DIGEST}"))
    validate_core(objects)
    assert [o["kind"] for o in objects] == [
        "Secret",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Service",
        "PodDisruptionBudget",
    ]
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
        autoscale=Autoscale(min_replicas=4, max_replicas=12),
    )
    validate_core(objects)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    canary_hpa = by_name[("HorizontalPodAutoscaler", "digits-canary")]["spec"]
    assert (canary_hpa["minReplicas"], canary_hpa["maxReplicas"]) == (1, 3)
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
    # The CRDs' objects are held to their published schemas as strictly.
    objects = render(
        "digits", Track("stable", "3", "r"), Track("canary", "4", "r"), kserve_predictors=True
    )
    [route] = of_kind(objects, "HTTPRoute")
    [isvc, _] = of_kind(objects, "InferenceService")
    for obj, breaks in [
        (route, lambda o: o["spec"]["rules"][0]["backendRefs"][0].update(weight=-1)),
        (route, lambda o: o["spec"].update(rule=[])),
        (isvc, lambda o: o["spec"]["predictor"].update(replicas=3)),
        (isvc, lambda o: o["spec"]["predictor"].update(minReplicas="two")),
    ]:
        validate_core([obj])
        broken = copy.deepcopy(obj)
        breaks(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate_core([broken])
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


def manifest_deploy(deploy: dict[str, Any]) -> dict[str, Any]:
    """The example project's manifest with `deploy` replaced."""
    data = yaml.safe_load((ROOT / "examples" / "digits-sklearn" / "shipyard.yaml").read_text())
    return {**data, "deploy": deploy}


def test_each_track_scales_by_an_hpa_on_cpu_with_the_manifests_values() -> None:
    autoscale = {"min_replicas": 3, "max_replicas": 20, "cpu_percent": 60}
    policy = parse_manifest(manifest_deploy({"autoscale": autoscale})).deploy
    objects = render(
        "digits",
        Track("stable", "3", f"r/m@{DIGEST}"),
        Track("canary", "4", f"r/m@sha256:{'b' * 64}"),
        weight=10,
        autoscale=policy.autoscale,
    )
    validate_core(objects)
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    hpas = {h["metadata"]["name"]: h["spec"] for h in of_kind(objects, "HorizontalPodAutoscaler")}
    assert hpas.keys() == deployments.keys() == {"digits", "digits-canary"}
    for name, hpa in hpas.items():
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["metrics"] == [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 60},
                },
            }
        ]  # no requests-per-second metric: no adapter was named
        # The HPA owns the count: a rendered one would be reset by every `kubectl apply`.
        assert "replicas" not in deployments[name]["spec"]
    assert (hpas["digits"]["minReplicas"], hpas["digits"]["maxReplicas"]) == (3, 20)
    assert (hpas["digits-canary"]["minReplicas"], hpas["digits-canary"]["maxReplicas"]) == (1, 2)


def test_requests_per_second_scale_a_track_only_through_a_named_metrics_adapter() -> None:
    autoscale = {"rps_per_replica": 12.5, "metrics_adapter": "prometheus-adapter"}
    policy = parse_manifest(manifest_deploy({"autoscale": autoscale})).deploy
    objects = render("digits", Track("stable", "3", f"r/m@{DIGEST}"), autoscale=policy.autoscale)
    validate_core(objects)
    [hpa] = of_kind(objects, "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert hpa["spec"]["metrics"][1]["pods"] == {
        "metric": {"name": "shipyard_requests_per_second"},
        "target": {"type": "AverageValue", "averageValue": "12500m"},  # 12.5 per pod
    }


@pytest.mark.parametrize("weight", [0, 1, 10, 33, 50, 99, 100])
@pytest.mark.parametrize(("low", "high"), [(1, 1), (2, 10), (3, 7), (5, 100)])
def test_the_canary_split_is_kept_at_every_scale_the_autoscalers_pick(
    weight: int, low: int, high: int
) -> None:
    objects = render(
        "digits",
        Track("stable", "3", f"r/m@{DIGEST}"),
        Track("canary", "4", f"r/m@sha256:{'b' * 64}"),
        weight=weight,
        autoscale=Autoscale(min_replicas=low, max_replicas=high),
    )
    [route] = of_kind(objects, "HTTPRoute")
    # The split is the route's weights, whatever the replica counts...
    weights = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"digits-stable": 100 - weight, "digits-canary": weight}
    # ...and the canary's autoscaler has room for its share of the stable's at both ends.
    hpas = {h["metadata"]["name"]: h["spec"] for h in of_kind(objects, "HorizontalPodAutoscaler")}
    stable, canary = hpas["digits"], hpas["digits-canary"]
    assert (stable["minReplicas"], stable["maxReplicas"]) == (low, high)
    for end in ("minReplicas", "maxReplicas"):
        assert canary[end] == max(1, math.ceil(stable[end] * weight / 100))
        assert canary[end] * 100 >= stable[end] * weight


def test_every_track_has_a_disruption_budget_of_one_pod_over_its_own_pods() -> None:
    objects = render(
        "a.b_c",
        Track("stable", "3", f"r/m@{DIGEST}"),
        Track("canary", "4", f"r/m@sha256:{'b' * 64}"),
    )
    validate_core(objects)
    budgets = {b["metadata"]["name"]: b["spec"] for b in of_kind(objects, "PodDisruptionBudget")}
    deployments = {d["metadata"]["name"]: d["spec"] for d in of_kind(objects, "Deployment")}
    assert budgets.keys() == deployments.keys() and len(budgets) == 2
    for name, budget in budgets.items():
        # maxUnavailable, not minAvailable: holds at any scale, never blocks a node drain
        assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
        assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        # exactly its own track's pods: the Deployment's selector
        assert budget["selector"] == deployments[name]["selector"]
    selectors = [b["selector"]["matchLabels"]["shipyard.ai/track"] for b in budgets.values()]
    assert sorted(selectors) == ["canary", "stable"]


@pytest.mark.parametrize("zones", [False, True])
def test_each_tracks_pods_spread_over_nodes_and_zones_if_asked(zones: bool) -> None:
    objects = render(
        "digits",
        Track("stable", "3", f"r/m@{DIGEST}"),
        Track("canary", "4", f"r/m@sha256:{'b' * 64}"),
        zones=zones,
    )
    validate_core(objects)
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
        expected = {"kubernetes.io/hostname"} | (
            {"topology.kubernetes.io/zone"} if zones else set()
        )
        assert spread.keys() == expected
        node = spread["kubernetes.io/hostname"]
        assert (node["maxSkew"], node["whenUnsatisfiable"]) == (1, "DoNotSchedule")
        assert node["labelSelector"] == deployment["spec"]["selector"]
        assert node["matchLabelKeys"] == ["pod-template-hash"]  # each revision on its own
        assert node["nodeTaintsPolicy"] == "Honor"  # tainted nodes are no domain to fill
        if zones:
            assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"


@pytest.mark.parametrize(
    ("autoscale", "field", "expected"),
    [
        ({"min_replicas": 0}, "min_replicas", "greater than or equal to 1 (got 0)"),
        ({"max_replicas": 1001}, "max_replicas", "less than or equal to 1000 (got 1001)"),
        ({"cpu_percent": 150}, "cpu_percent", "less than or equal to 100 (got 150)"),
        ({"rps_per_replica": -5, "metrics_adapter": "prometheus-adapter"},
         "rps_per_replica", "greater than 0 (got -5)"),
        ({"metrics_adapter": "keda", "rps_per_replica": 5},
         "metrics_adapter", "Input should be 'prometheus-adapter' (got 'keda')"),
        ({"min_replicas": 5, "max_replicas": 2}, "",
         "max_replicas 2 is below min_replicas 5: set max_replicas to at least 5 "
         "(got {'min_replicas': 5, 'max_replicas': 2})"),
        ({"rps_per_replica": 50}, "",
         "rps_per_replica 50.0 and metrics_adapter None go together (the requests-per-second "
         "metric is served by the adapter): set both, e.g. metrics_adapter: prometheus-adapter, "
         "or neither (got {'rps_per_replica': 50})"),
        ({"max": 3}, "max", "Extra inputs are not permitted (got 3)"),
    ],
)  # fmt: skip
def test_bad_autoscale_values_are_rejected_naming_the_field_the_value_and_the_fix(
    autoscale: dict[str, Any], field: str, expected: str
) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest(manifest_deploy({"autoscale": autoscale}))
    [line] = [line for line in str(e.value).splitlines() if line.startswith("  - ")]
    assert line.startswith(f"  - deploy.autoscale{'.' if field else ''}{field}: ")
    assert line.endswith(expected)


def test_kserve_inference_services_are_valid_against_kserves_crd_and_keep_the_split() -> None:
    objects = render(
        "digits",
        Track("stable", "3", f"r/m@{DIGEST}"),
        Track("canary", "4", f"r/m@sha256:{'b' * 64}"),
        weight=25,
        autoscale=Autoscale(min_replicas=2, max_replicas=8, cpu_percent=65),
        kserve_predictors=True,
    )
    validate_core(objects)  # the InferenceServices against KServe's published CRD schema
    kinds = [o["kind"] for o in objects]
    assert "Deployment" not in kinds and "HorizontalPodAutoscaler" not in kinds  # KServe's own
    services = {o["metadata"]["name"]: o for o in of_kind(objects, "InferenceService")}
    assert services.keys() == {"digits", "digits-canary"}
    [route] = of_kind(objects, "HTTPRoute")
    backends = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
    assert backends == {"digits-predictor": 75, "digits-canary-predictor": 25}
    budgets = {b["metadata"]["name"]: b for b in of_kind(objects, "PodDisruptionBudget")}
    for name, isvc in services.items():
        assert (
            isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        )
        predictor = isvc["spec"]["predictor"]
        [container] = predictor["containers"]
        assert container["name"] == "kserve-container"
        assert container["image"].startswith("r/m@sha256:")
        assert predictor["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert predictor["scaleMetric"] == "cpu" and predictor["scaleTarget"] == 65
        # the budget and the spread pick the predictor's pods by the labels KServe puts on them
        selector = budgets[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= predictor["labels"].items()
        spread = predictor["topologySpreadConstraints"][0]
        assert spread["labelSelector"]["matchLabels"] == selector
    assert (services["digits"]["spec"]["predictor"]["minReplicas"], 
            services["digits"]["spec"]["predictor"]["maxReplicas"]) == (2, 8)  # fmt: skip
    canary = services["digits-canary"]["spec"]["predictor"]
    assert (canary["minReplicas"], canary["maxReplicas"]) == (1, 2)


@pytest.mark.parametrize("model", ["a.b_c", "z" * 63, "m" + "._-" * 20 + "z"])
def test_kserves_predictor_service_names_are_valid_for_any_model_name(model: str) -> None:
    objects = render(
        model,
        Track("stable", "3", f"r/m@{DIGEST}"),
        Track("canary", "4", f"r/m@sha256:{'b' * 64}"),
        kserve_predictors=True,
    )
    validate_core(objects)
    names = [o["metadata"]["name"] for o in of_kind(objects, "InferenceService")]
    [route] = of_kind(objects, "HTTPRoute")
    refs = [r["name"] for r in route["spec"]["rules"][0]["backendRefs"]]
    # KServe names its Service `<name>-predictor`: that must be an RFC 1035 label too
    assert refs == [f"{name}-predictor" for name in names] and len(set(refs)) == 2
    assert all(len(ref) <= 63 and DNS1035.fullmatch(ref) for ref in refs)
