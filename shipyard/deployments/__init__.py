"""How Shipyard's flows are deployed: served from a checkout, or via `prefect.yaml`."""
