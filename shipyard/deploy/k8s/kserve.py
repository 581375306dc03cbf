"""A track as a KServe `InferenceService` (serving.kserve.io/v1beta1), for teams on KServe.

The predictor is Shipyard's own image as a custom container (it speaks the V2 protocol), with
the same pod as the plain Deployment. `RawDeployment` mode (KServe ≥ 0.20 calls it `Standard`
and still reads the old name): KServe creates a Deployment, a Service `<name>-predictor` and an
HPA on CPU from `minReplicas`/`maxReplicas`/`scaleTarget`; Shipyard's HTTPRoute splits traffic
between the tracks' predictor Services, as between its own.
"""

from __future__ import annotations

from typing import Any

from shipyard.deploy.k8s.names import LABEL_MAX, Track, metadata, pod_labels, workload_name
from shipyard.deploy.k8s.pods import container, pod_spec
from shipyard.deploy.k8s.scaling import bounds
from shipyard.manifest import Autoscale, Resources

PREDICTOR_SUFFIX = "-predictor"


def service_name(model: str, track: str) -> str:
    """The name of the InferenceService of `track`, short enough that KServe's
    `<name>-predictor` Service name is a valid label too."""
    return workload_name(model, track, LABEL_MAX - len(PREDICTOR_SUFFIX))


def predictor_service(model: str, track: str) -> str:
    """The Service KServe creates for the track's predictor (port 80)."""
    return service_name(model, track) + PREDICTOR_SUFFIX


def inference_service(
    model: str,
    track: Track,
    autoscale: Autoscale,
    weight: int,
    namespace: str,
    resources: Resources,
    zones: bool,
) -> dict[str, Any]:
    """The track's InferenceService, scaled on CPU within the track's bounds (KServe's own HPA
    takes no requests-per-second metric in this mode)."""
    low, high = bounds(autoscale, track.name, weight)
    labels = pod_labels(model, track)
    meta = metadata(model, service_name(model, track.name), namespace, labels)
    meta["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {
            "predictor": {
                "labels": dict(labels),  # on the pods: the PDB and the spread select them
                "minReplicas": low,
                "maxReplicas": high,
                "scaleMetric": "cpu",
                "scaleTarget": autoscale.cpu_percent,
                **pod_spec(model, track, zones),
                "containers": [
                    container(track, resources, name="kserve-container", port_name=None)
                ],
            }
        },
    }
