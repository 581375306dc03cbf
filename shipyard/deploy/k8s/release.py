"""One model's release as Kubernetes objects: the tracks' workloads, Services, autoscalers,
disruption budgets and the weighted route between them."""

from __future__ import annotations

from typing import Any

from shipyard.deploy.k8s import kserve
from shipyard.deploy.k8s.names import (
    Track,
    metadata,
    model_labels,
    object_name,
    pod_labels,
    track_selector,
    workload_name,
)
from shipyard.deploy.k8s.pods import container, pod_spec, secret
from shipyard.deploy.k8s.scaling import autoscaler, disruption_budget
from shipyard.manifest import Autoscale, Resources


def _deployment(
    model: str, track: Track, namespace: str, resources: Resources, zones: bool
) -> dict[str, Any]:
    # No `replicas`: the HPA owns the count, and an `apply` of a rendered count would reset it
    # (https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/#migrating-deployments-and-statefulsets-to-horizontal-autoscaling).
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            model, workload_name(model, track.name), namespace, pod_labels(model, track)
        ),
        "spec": {
            "selector": {"matchLabels": track_selector(model, track.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels(model, track)},
                "spec": {
                    **pod_spec(model, track, zones),
                    "containers": [container(track, resources)],
                },
            },
        },
    }


def _service(name: str, model: str, selector: dict[str, str], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(model, name, namespace, model_labels(model)),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def _route(
    model: str, backends: dict[str, str], weight: int, namespace: str, gateway: str
) -> dict[str, Any]:
    """A Gateway API HTTPRoute: `weight` % to the canary's Service, the rest to the stable's."""
    weights = {"stable": 100 - weight, "canary": weight}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(model, object_name(model), namespace, model_labels(model)),
        "spec": {
            "parentRefs": [{"name": gateway}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": service, "port": 80, "weight": weights[track]}
                        for track, service in backends.items()
                    ]
                }
            ],
        },
    }


def render(
    model: str,
    stable: Track,
    canary: Track | None = None,
    weight: int = 10,
    namespace: str = "default",
    gateway: str = "shipyard",
    resources: Resources | None = None,
    api_keys: list[str] | None = None,
    autoscale: Autoscale | None = None,
    zones: bool = False,
    kserve_predictors: bool = False,
) -> list[dict[str, Any]]:
    """The objects of one model's release; with `canary`, `weight` % of traffic goes to it.

    Each server container is limited to `resources` and each track scaled by `autoscale`
    (default: `deploy.resources`' and `deploy.autoscale`'s defaults), spread over nodes (and
    `zones`); each requires one of `api_keys` (none: no key), which only the Secret holds.
    `kserve_predictors`: each track is a KServe InferenceService instead of a Deployment, its
    Service and HPA (KServe makes those)."""
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be 0..100 %, got {weight}")
    resources = resources or Resources()
    autoscale = autoscale or Autoscale()
    tracks = [stable] if canary is None else [stable, canary]
    objects = [secret(model, api_keys or [], namespace)]
    if not kserve_predictors:  # one Service over both tracks, split by ready pods
        both = {"app.kubernetes.io/name": object_name(model)}
        objects.append(_service(object_name(model), model, both, namespace))
    backends: dict[str, str] = {}
    for track in tracks:
        if kserve_predictors:
            objects.append(
                kserve.inference_service(
                    model, track, autoscale, weight, namespace, resources, zones
                )
            )
            name = kserve.service_name(model, track.name)
            backends[track.name] = kserve.predictor_service(model, track.name)
        else:
            name = workload_name(model, track.name)
            service = object_name(model, track.name)
            selector = track_selector(model, track.name)
            objects.append(_deployment(model, track, namespace, resources, zones))
            objects.append(autoscaler(model, name, track.name, autoscale, weight, namespace))
            objects.append(_service(service, model, selector, namespace))
            backends[track.name] = service
        objects.append(disruption_budget(model, name, track.name, namespace))
    if canary is not None:
        objects.append(_route(model, backends, weight, namespace, gateway))
    return objects
