"""How many pods a track runs, and where: its HorizontalPodAutoscaler, its PodDisruptionBudget,
its spread across nodes.

The traffic split is the HTTPRoute's weights, not the replica counts (as Flagger and Argo
Rollouts do when a router is there): each track has its own HPA, sized to its share. The
stable's bounds are `deploy.autoscale`'s, the canary's are the same scaled by its weight and
rounded up (`ceil(n * weight / 100)`, at least 1: Argo Rollouts' canary scale), so the canary
has room for its share at every scale and the split survives any scaling. The model-wide
Service (both tracks) splits by ready pods, so its split follows the HPAs: use the route.
"""

from __future__ import annotations

import math
from typing import Any

from shipyard.deploy.k8s.names import metadata, model_labels, track_selector
from shipyard.manifest import Autoscale

RPS_METRIC = "shipyard_requests_per_second"
"""`shipyard_requests_total` as a per-pod rate, named by prometheus-adapter's rule (README)."""


def bounds(autoscale: Autoscale, track: str, weight: int) -> tuple[int, int]:
    """(min, max) replicas of `track`: the stable's as configured, the canary's scaled by
    `weight` % (rounded up, at least 1)."""
    if track == "stable":
        return autoscale.min_replicas, autoscale.max_replicas
    share = [
        max(1, math.ceil(n * weight / 100))
        for n in (autoscale.min_replicas, autoscale.max_replicas)
    ]
    return share[0], share[1]


def _quantity(value: float) -> str:
    """A Kubernetes quantity: `50` or, for a fraction, milli-units (`12500m` = 12.5)."""
    return str(int(value)) if value == int(value) else f"{round(value * 1000)}m"


def autoscaler(
    model: str,
    deployment: str,
    track: str,
    autoscale: Autoscale,
    weight: int,
    namespace: str,
) -> dict[str, Any]:
    """The track's HPA (autoscaling/v2): CPU utilization of the request, and requests per
    second per pod when a metrics adapter serves them (the HPA scales on the higher)."""
    low, high = bounds(autoscale, track, weight)
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": autoscale.cpu_percent},
            },
        }
    ]
    if autoscale.metrics_adapter is not None and autoscale.rps_per_replica is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": RPS_METRIC},
                    "target": {
                        "type": "AverageValue",
                        "averageValue": _quantity(autoscale.rps_per_replica),
                    },
                },
            }
        )
    labels = {**model_labels(model), "shipyard.ai/track": track}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(model, deployment, namespace, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": metrics,
        },
    }


def disruption_budget(model: str, name: str, track: str, namespace: str) -> dict[str, Any]:
    """At most one of the track's pods evicted at a time (policy/v1).

    `maxUnavailable: 1`, not `minAvailable`: it holds at any scale the HPA picks, and never
    blocks a node drain (a one-pod canary under `minAvailable: 1` would, forever). Pods that
    are not ready may always be evicted: a crash-looping pod must not hold a drain."""
    labels = {**model_labels(model), "shipyard.ai/track": track}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(model, name, namespace, labels),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": track_selector(model, track)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def spread(model: str, track: str, zones: bool) -> list[dict[str, Any]]:
    """The track's pods one per node before two on one (`DoNotSchedule`, skew 1), and, with
    `zones`, evenly over zones when they can be (`ScheduleAnyway`: zones differ in capacity).

    Each revision is spread on its own (`pod-template-hash`), so a rolling update's surge is
    never held by the old pods; nodes the pod cannot use (taints, affinity) do not count."""
    constraints = [("kubernetes.io/hostname", "DoNotSchedule")]
    if zones:
        constraints.append(("topology.kubernetes.io/zone", "ScheduleAnyway"))
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": track_selector(model, track)},
            "matchLabelKeys": ["pod-template-hash"],
            "nodeAffinityPolicy": "Honor",
            "nodeTaintsPolicy": "Honor",
        }
        for key, when in constraints
    ]
