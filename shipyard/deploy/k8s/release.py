"""The same release as Kubernetes objects, for users who outgrow one host (`shipyard render k8s`).

- a stable Deployment (the `champion`) and, when a canary is asked for, a canary Deployment
  (default: the `candidate`), each pulling its image by digest, probed on the V2 health routes,
  run as the image's non-root user under the runtime's default seccomp profile, with a
  read-only root filesystem (an emptyDir on /tmp), no capabilities, no privilege escalation,
  and the requests/limits of `deploy.resources` (the pod's process limit is the node's
  `podPidsLimit`: Kubernetes has no per-container one);
- a Secret holding the API keys, mounted read-only as the file the server reads
  (SHIPYARD_SERVE_API_KEYS_FILE): no key is in a Deployment;
- a Service per track and one for the model (both tracks, split by replica count);
- a Gateway API `HTTPRoute` that splits traffic by weight between the tracks' Services, for
  clusters that run a Gateway controller.

Object names are RFC 1123 / 1035 labels for any model name: a name that is not one as it is
(`.` or `_`, a leading digit, too long) is cleaned and gets a short hash of the original, so two
models never share one. The model's own name is in the `shipyard.ai/model` annotation.

Rendering only: applying is `kubectl apply -f`.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from shipyard.deploy.containers import IMAGE_USER, KEYS_FILE, TMP_MB, workers
from shipyard.manifest import Resources

PORT = 8080
LABEL_MAX = 63
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
"""RFC 1035 label (Service names need it; it is also an RFC 1123 label and a label value)."""


def object_name(model: str, suffix: str = "") -> str:
    """`model[-suffix]` as a valid object name, unchanged when it already is one; otherwise
    cleaned (`.`/`_` → `-`, a leading letter, at most 63 characters) with 8 hex digits of the
    original's sha256, so that distinct models keep distinct names."""
    wanted = f"{model}-{suffix}" if suffix else model
    if len(wanted) <= LABEL_MAX and _DNS_LABEL.fullmatch(wanted):
        return wanted
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:8]
    clean = re.sub(r"[^a-z0-9-]", "-", wanted.lower())
    if not clean[:1].isalpha():
        clean = f"m-{clean}"
    head = clean[: LABEL_MAX - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


@dataclass(frozen=True)
class Track:
    name: str
    """`stable` or `canary`."""
    version: str
    image: str
    """repository@sha256:… as a cluster pulls it."""


def _model_labels(model: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": object_name(model),
        "app.kubernetes.io/managed-by": "shipyard",
    }


def _labels(model: str, track: Track) -> dict[str, str]:
    return {
        **_model_labels(model),
        "app.kubernetes.io/version": f"v{track.version}",
        "shipyard.ai/track": track.name,
    }


def _metadata(model: str, name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {"shipyard.ai/model": model},
    }


def _resources(resources: Resources) -> dict[str, dict[str, str]]:
    """Requests equal to limits: the pod is `Guaranteed`, as the Docker container is limited."""
    amounts = {"cpu": f"{round(resources.cpus * 1000)}m", "memory": f"{resources.memory_mb}Mi"}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _secret(model: str, api_keys: list[str], namespace: str) -> dict[str, Any]:
    labels = _model_labels(model)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(model, object_name(model, "api-keys"), namespace, labels),
        "type": "Opaque",
        # One key a line; empty: the server requires no key (as with no SHIPYARD_SERVE_API_KEY).
        "stringData": {posixpath.basename(KEYS_FILE): "".join(f"{k}\n" for k in api_keys)},
    }


def _deployment(
    model: str, track: Track, replicas: int, namespace: str, resources: Resources
) -> dict[str, Any]:
    name = object_name(model) if track.name == "stable" else object_name(model, track.name)
    selector = {"app.kubernetes.io/name": object_name(model), "shipyard.ai/track": track.name}
    ready = {"httpGet": {"path": "/v2/health/ready", "port": PORT}}
    keys_dir, keys_name = posixpath.split(KEYS_FILE)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(model, name, namespace, _labels(model, track)),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(model, track)},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": IMAGE_USER,
                        "runAsGroup": IMAGE_USER,
                        "fsGroup": IMAGE_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "server",
                            "image": track.image,
                            "ports": [{"name": "http", "containerPort": PORT}],
                            "env": [
                                {"name": "SHIPYARD_SERVE_HOST", "value": "0.0.0.0"},
                                {
                                    "name": "SHIPYARD_SERVE_WORKERS",
                                    "value": str(workers(resources)),
                                },
                                {"name": "SHIPYARD_SERVE_API_KEYS_FILE", "value": KEYS_FILE},
                            ],
                            # Up to 60 s to load the model before liveness counts.
                            "startupProbe": {**ready, "periodSeconds": 2, "failureThreshold": 30},
                            "readinessProbe": {**ready, "periodSeconds": 5},
                            "livenessProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": PORT},
                                "periodSeconds": 10,
                            },
                            "resources": _resources(resources),
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "api-keys", "mountPath": keys_dir, "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "tmp",
                            "emptyDir": {"sizeLimit": f"{TMP_MB}Mi"},
                        },
                        {
                            "name": "api-keys",
                            "secret": {
                                "secretName": object_name(model, "api-keys"),
                                "items": [{"key": keys_name, "path": keys_name}],
                                "defaultMode": 0o440,  # group fsGroup: the server's user only
                            },
                        },
                    ],
                },
            },
        },
    }


def _service(name: str, model: str, selector: dict[str, str], namespace: str) -> dict[str, Any]:
    labels = _model_labels(model)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(model, name, namespace, labels),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def _track_service(model: str, track: str, namespace: str) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": object_name(model), "shipyard.ai/track": track}
    return _service(object_name(model, track), model, selector, namespace)


def render(
    model: str,
    stable: Track,
    canary: Track | None = None,
    weight: int = 10,
    replicas: int = 2,
    namespace: str = "default",
    gateway: str = "shipyard",
    resources: Resources | None = None,
    api_keys: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The objects of one model's release; with `canary`, `weight` % of traffic goes to it.

    Each server container is limited to `resources` (default: `deploy.resources`' defaults)
    and requires one of `api_keys` (none: no key), which only the Secret holds."""
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be 0..100 %, got {weight}")
    resources = resources or Resources()
    objects = [
        _secret(model, api_keys or [], namespace),
        _deployment(model, stable, replicas, namespace, resources),
        _service(
            object_name(model), model, {"app.kubernetes.io/name": object_name(model)}, namespace
        ),
        _track_service(model, "stable", namespace),
    ]
    if canary is None:
        return objects
    canary_replicas = max(1, math.ceil(replicas * weight / 100))
    objects.append(_deployment(model, canary, canary_replicas, namespace, resources))
    objects.append(_track_service(model, "canary", namespace))
    objects.append(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": _metadata(
                model,
                object_name(model),
                namespace,
                _model_labels(model),
            ),
            "spec": {
                "parentRefs": [{"name": gateway}],
                "rules": [
                    {
                        "backendRefs": [
                            {
                                "name": object_name(model, "stable"),
                                "port": 80,
                                "weight": 100 - weight,
                            },
                            {"name": object_name(model, "canary"), "port": 80, "weight": weight},
                        ]
                    }
                ],
            },
        }
    )
    return objects
