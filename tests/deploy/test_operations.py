"""Operating deployed endpoints: `shipyard undeploy`, and servers that require an API key.

Each test serves a second model of its own (versions registered from the shared endpoint's
releases: the same pushed images and golden data, no training) on its own port, so the shared
endpoint is never taken down.
"""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from shipyard import engine
from shipyard.deploy import containers, state
from shipyard.deploy.endpoint import undeploy
from tests.support.endpoints import (
    MODEL,
    Endpoint,
    aliases,
    deploy_copy,
    register_copy,
    served_version,
    serving_containers,
    steady_load,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]

KEY = "deploy-test-key-0123456789"
ROW = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


def infer(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{MODEL}/infer", json=ROW, headers=headers, timeout=5)


def test_undeploy_removes_the_containers_and_the_endpoint_and_champion_becomes_previous(
    endpoint: Endpoint,
) -> None:
    settings, name = endpoint.settings, f"{MODEL}-undeploy"
    version = register_copy(settings, MODEL, name, "champion")
    try:
        url = deploy_copy(settings, name, version, containers.free_port("127.0.0.1"))
        assert serving_containers(settings, name) == [version]
        assert infer(url).status_code == 200
        assert aliases(settings, name)["champion"] == version

        done = endpoint.cli("undeploy", name)

        assert done.returncode == 0, done.stderr
        assert f"stopped the endpoint {url}" in done.stderr
        assert containers.of_model(engine.engine(settings), name) == []
        with pytest.raises(httpx.ConnectError):
            infer(url)
        assert state.load(settings.deploy_dir, name) is None
        assert aliases(settings, name) == {"previous": version}
        assert served_version(endpoint.url) == endpoint.aliases()["champion"]  # the other model
    finally:
        undeploy(settings, name)


def test_a_deployed_server_requires_its_key_and_the_rollouts_gates_use_it(
    endpoint: Endpoint,
) -> None:
    previous = endpoint.previous()
    champion = endpoint.aliases()["champion"]
    name = f"{MODEL}-keyed"
    keyed = endpoint.settings.model_copy(update={"serve_api_key": SecretStr(KEY)})
    first = register_copy(keyed, MODEL, name, "champion")
    second = register_copy(keyed, MODEL, name, "previous")
    bearer = {"Authorization": f"Bearer {KEY}"}
    try:
        # A first deploy: readiness, then the golden smoke requests, which need the key.
        url = deploy_copy(keyed, name, first, containers.free_port("127.0.0.1"))
        assert infer(url).status_code == 401
        assert infer(url, {"Authorization": "Bearer not-the-key"}).status_code == 401
        answer = infer(url, bearer)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == champion

        # A blue-green rollout under keyed load: every gate passes, no request fails.
        with steady_load(url, key=KEY) as counts:
            deploy_copy(keyed, name, second, int(url.rpartition(":")[2]))
        assert counts["sent"] > 100 and counts["failed"] == 0, counts
        assert set(counts["versions"]) == {champion, previous}
        assert serving_containers(keyed, name) == [second]
        assert served_version(url, KEY) == previous
        assert infer(url).status_code == 401
    finally:
        undeploy(keyed, name)
