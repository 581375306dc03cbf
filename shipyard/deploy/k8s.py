"""The same release as Kubernetes objects, for users who outgrow one host (`shipyard render k8s`).

- a stable Deployment (the `champion`) and, when a canary is asked for, a canary Deployment
  (default: the `candidate`), each pulling its image by digest, probed on the V2 health routes,
  run as the image's non-root user with a read-only root filesystem;
- a Service per track and one for the model (both tracks, split by replica count);
- a Gateway API `HTTPRoute` that splits traffic by weight between the tracks' Services, for
  clusters that run a Gateway controller.

Rendering only: applying is `kubectl apply -f`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PORT = 8080


@dataclass(frozen=True)
class Track:
    name: str
    """`stable` or `canary`."""
    version: str
    image: str
    """repository@sha256:… as a cluster pulls it."""


def _labels(model: str, track: Track) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": model,
        "app.kubernetes.io/version": f"v{track.version}",
        "app.kubernetes.io/managed-by": "shipyard",
        "shipyard.ai/track": track.name,
    }


def _deployment(model: str, track: Track, replicas: int, namespace: str) -> dict[str, Any]:
    name = model if track.name == "stable" else f"{model}-{track.name}"
    selector = {"app.kubernetes.io/name": model, "shipyard.ai/track": track.name}
    probe = {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 5}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(model, track)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(model, track)},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "server",
                            "image": track.image,
                            "ports": [{"name": "http", "containerPort": PORT}],
                            "env": [
                                {"name": "SHIPYARD_SERVE_HOST", "value": "0.0.0.0"},
                                {"name": "SHIPYARD_SERVE_WORKERS", "value": "1"},
                            ],
                            "readinessProbe": probe,
                            "livenessProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": PORT},
                                "periodSeconds": 10,
                            },
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _service(name: str, model: str, selector: dict[str, str], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": model, "app.kubernetes.io/managed-by": "shipyard"},
        },
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def render(
    model: str,
    stable: Track,
    canary: Track | None = None,
    weight: int = 10,
    replicas: int = 2,
    namespace: str = "default",
    gateway: str = "shipyard",
) -> list[dict[str, Any]]:
    """The objects of one model's release; with `canary`, `weight` % of traffic goes to it."""
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be 0..100 %, got {weight}")
    objects = [_deployment(model, stable, replicas, namespace)]
    objects.append(_service(model, model, {"app.kubernetes.io/name": model}, namespace))
    objects.append(
        _service(
            f"{model}-stable",
            model,
            {"app.kubernetes.io/name": model, "shipyard.ai/track": "stable"},
            namespace,
        )
    )
    if canary is None:
        return objects
    canary_replicas = max(1, math.ceil(replicas * weight / 100))
    objects.append(_deployment(model, canary, canary_replicas, namespace))
    objects.append(
        _service(
            f"{model}-canary",
            model,
            {"app.kubernetes.io/name": model, "shipyard.ai/track": "canary"},
            namespace,
        )
    )
    objects.append(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": model, "namespace": namespace},
            "spec": {
                "parentRefs": [{"name": gateway}],
                "rules": [
                    {
                        "backendRefs": [
                            {"name": f"{model}-stable", "port": 80, "weight": 100 - weight},
                            {"name": f"{model}-canary", "port": 80, "weight": weight},
                        ]
                    }
                ],
            },
        }
    )
    return objects
