"""The same release as Kubernetes objects, for users who outgrow one host (`shipyard render k8s`).

- a stable Deployment (the `champion`) and, when a canary is asked for, a canary Deployment
  (default: the `candidate`), each pulling its image by digest, probed on the V2 health routes,
  run as the image's non-root user under the runtime's default seccomp profile, with a
  read-only root filesystem (an emptyDir on /tmp), no capabilities, no privilege escalation,
  and the requests/limits of `deploy.resources` (the pod's process limit is the node's
  `podPidsLimit`: Kubernetes has no per-container one); its pods spread one per node;
- per track, a HorizontalPodAutoscaler (`deploy.autoscale`: CPU, and requests per second with
  a metrics adapter) and a PodDisruptionBudget (`scaling.py` says why each is so);
- a Secret holding the API keys, mounted read-only as the file the server reads
  (SHIPYARD_SERVE_API_KEYS_FILE): no key is in a Deployment;
- a Service per track and one for the model (both tracks, split by ready pods);
- a Gateway API `HTTPRoute` that splits traffic by weight between the tracks' Services, for
  clusters that run a Gateway controller;
- or, for teams on KServe, an `InferenceService` per track in place of its Deployment, Service
  and HPA (`kserve.py`).

Object names are RFC 1123 / 1035 labels for any model name: a name that is not one as it is
(`.` or `_`, a leading digit, too long) is cleaned and gets a short hash of the original, so two
models never share one. The model's own name is in the `shipyard.ai/model` annotation.

Rendering only: applying is `kubectl apply -f`.
"""

from shipyard.deploy.k8s.names import Track, object_name
from shipyard.deploy.k8s.release import render

__all__ = ["Track", "object_name", "render"]
