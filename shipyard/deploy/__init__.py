"""The Docker deploy target: serving containers behind HAProxy on one host.

- `proxy`: the HAProxy process of a model's stable endpoint, driven through its runtime API.
- `containers`: serving containers run by image digest, labelled, found and removed.
- `state`: what is deployed where (`<state_dir>/deploy/<model>/state.json`).
- `checks`: the rollout gates: readiness, golden smoke requests, live Prometheus metrics.
- `rollout`: the strategies (recreate, blue-green, canary) built from the above.
- `k8s`: the same release rendered as Kubernetes objects.
"""
