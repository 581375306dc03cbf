"""The rollout gates of the Swarm target, sent through the endpoint proxy's gate socket of a
slot: the golden smoke requests to one replica of the new version, and the live metrics of
every replica (one `/metrics` per replica, picked by `X-Shipyard-Server`), added up.

The decisions are `checks`' (`judge`, `window`, the golden parity); only the transport differs.
"""

from __future__ import annotations

import httpx
import numpy as np

from shipyard.deploy import checks
from shipyard.deploy.checks import Counts, Golden
from shipyard.deploy.swarm_proxy import SERVER_HEADER, SwarmProxy
from shipyard.image.build import PARITY, differences


def gate(proxy: SwarmProxy, color: str) -> httpx.Client:
    """An HTTP client of the slot's gate socket (one replica of that version per request)."""
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(proxy.gates[color])), base_url="http://gate"
    )


def smoke(client: httpx.Client, golden: Golden, api_key: str | None) -> list[str]:
    """`checks.smoke` through a gate: how the answer differs from the golden outputs."""
    try:
        answer = client.post(
            "/invocations",
            json={"inputs": golden.inputs},
            headers=checks.headers(api_key),
            timeout=30,
        )
    except httpx.HTTPError as e:
        return [f"Gate 'smoke' failed: the new version did not answer ({e})"]
    if answer.status_code != 200:
        return [
            f"Gate 'smoke' failed: /invocations answered {answer.status_code}: {answer.text[:200]}"
        ]
    mismatched, delta = differences(
        answer.json()["predictions"], np.asarray(golden.labels), np.asarray(golden.probabilities)
    )
    if mismatched or delta > PARITY:
        return [
            f"Gate 'smoke' failed: {mismatched} of {len(golden.labels)} golden labels differ, "
            f"max |Δprob| {delta:.2e} (limit {PARITY:.0e})"
        ]
    return []


def add(counts: list[Counts]) -> Counts:
    """Counters of several replicas as one server's."""
    buckets: dict[float, int] = {}
    for c in counts:
        for bound, n in c.buckets:
            buckets[bound] = buckets.get(bound, 0) + n
    return Counts(
        sum(c.requests for c in counts),
        sum(c.errors for c in counts),
        tuple(sorted(buckets.items())),
    )


def scrape(proxy: SwarmProxy, color: str) -> dict[str, Counts]:
    """Each UP replica's counters (by server and address), read through the slot's gate."""
    out = {}
    with gate(proxy, color) as client:
        for server in proxy.up(color, f"gate-{color}"):
            answer = client.get("/metrics", headers={SERVER_HEADER: server.name}, timeout=5)
            out[f"{server.name}@{server.address}"] = checks.parse(answer.text)
    return out
