"""The server's pod: the image by digest, non-root, read-only, limited, probed on the V2 health
routes, its API keys a file from the Secret; the same for a Deployment and a KServe predictor."""

from __future__ import annotations

import posixpath
from typing import Any

from shipyard.deploy.containers import IMAGE_USER, KEYS_FILE, TMP_MB, workers
from shipyard.deploy.k8s.names import Track, metadata, model_labels, object_name
from shipyard.deploy.k8s.scaling import spread
from shipyard.manifest import Resources

PORT = 8080


def _resources(resources: Resources) -> dict[str, dict[str, str]]:
    """Requests equal to limits: the pod is `Guaranteed`, as the Docker container is limited."""
    amounts = {"cpu": f"{round(resources.cpus * 1000)}m", "memory": f"{resources.memory_mb}Mi"}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def secret(model: str, api_keys: list[str], namespace: str) -> dict[str, Any]:
    labels = model_labels(model)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(model, object_name(model, "api-keys"), namespace, labels),
        "type": "Opaque",
        # One key a line; empty: the server requires no key (as with no SHIPYARD_SERVE_API_KEY).
        "stringData": {posixpath.basename(KEYS_FILE): "".join(f"{k}\n" for k in api_keys)},
    }


def container(
    track: Track, resources: Resources, name: str = "server", port_name: str | None = "http"
) -> dict[str, Any]:
    """The server container; KServe names it `kserve-container` and leaves its port unnamed
    (Knative accepts only `http1`/`h2c` as a port name)."""
    ready = {"httpGet": {"path": "/v2/health/ready", "port": PORT}}
    port: dict[str, Any] = {"containerPort": PORT, "protocol": "TCP"}
    if port_name:
        port = {"name": port_name, **port}
    return {
        "name": name,
        "image": track.image,
        "ports": [port],
        "env": [
            {"name": "SHIPYARD_SERVE_HOST", "value": "0.0.0.0"},
            {"name": "SHIPYARD_SERVE_WORKERS", "value": str(workers(resources))},
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
            {"name": "api-keys", "mountPath": posixpath.dirname(KEYS_FILE), "readOnly": True},
        ],
    }


def pod_spec(model: str, track: Track, zones: bool) -> dict[str, Any]:
    """Every field of the pod but its containers: user, volumes, spread across nodes (and
    `zones`)."""
    keys_name = posixpath.basename(KEYS_FILE)
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_USER,
            "runAsGroup": IMAGE_USER,
            "fsGroup": IMAGE_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
        "topologySpreadConstraints": spread(model, track.name, zones),
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": f"{TMP_MB}Mi"}},
            {
                "name": "api-keys",
                "secret": {
                    "secretName": object_name(model, "api-keys"),
                    "items": [{"key": keys_name, "path": keys_name}],
                    "defaultMode": 0o440,  # group fsGroup: the server's user only
                },
            },
        ],
    }
