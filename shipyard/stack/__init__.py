"""Provisioning the local stack: what `shipyard stack up|status|down` starts and stops.

`engine`: Debian's dockerd, an htpasswd registry and the base image; `services`: the Prefect
server and worker, the MLflow server and the webhook receiver. Releases never import this:
they use the runtime client in `shipyard.engine`.
"""
