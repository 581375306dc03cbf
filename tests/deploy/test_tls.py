"""An endpoint deployed with `deploy.tls` answers HTTPS only, with the certificate the stack's
development CA signed (`shipyard stack cert`): a client that trusts that CA verifies it, plain
HTTP on the same port gets no answer. Served from the shared endpoint's registered image (a
copy of the model, no new release)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from shipyard import registry
from shipyard.deploy import containers
from shipyard.deploy.endpoint import undeploy
from shipyard.deploy.proxy import render
from shipyard.flows.rollout import rollout, target_of_version
from shipyard.manifest import DeployPolicy, Tls
from shipyard.settings import Settings
from shipyard.stack.certs import ensure_dev_certs
from tests.support.endpoints import MODEL, Endpoint, register_copy

COPY = "digits-tls"


@pytest.mark.unit
def test_the_proxy_config_with_a_certificate_binds_tls_1_2_or_later_only() -> None:
    config = render("127.0.0.1:8443", {}, Path("/d/haproxy.sock"), Path("/d/endpoint.pem"))
    assert "    bind 127.0.0.1:8443 ssl crt /d/endpoint.pem alpn h2,http/1.1" in config.splitlines()
    assert "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets" in config
    assert "CBC" not in config and "RSA-AES" not in config.replace("ECDHE-RSA-AES", "")
    assert "ssl" not in render("127.0.0.1:8000", {}, Path("/d/haproxy.sock"))


@pytest.mark.docker
@pytest.mark.usefixtures("prefect_server")
def test_an_endpoint_with_deploy_tls_answers_https_verified_by_the_stack_ca_and_not_http(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    settings = endpoint.settings
    certs, made = ensure_dev_certs(Settings(stack_dir=tmp_path / "stack"))
    assert len(made) == 2
    for path in (certs.ca, certs.cert, certs.key, certs.ca_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(certs.ca.parent.stat().st_mode) == 0o700

    version = register_copy(settings, MODEL, COPY, "champion")
    target = target_of_version(
        settings, COPY, registry.client(settings).get_model_version(COPY, version)
    )
    port = containers.free_port("127.0.0.1")
    policy = DeployPolicy(
        port=port, keep_blue_seconds=1, ready_seconds=30, tls=Tls(cert=certs.cert, key=certs.key)
    )
    try:
        rollout(target, "blue-green", policy, settings, record_policy=True)
        https = f"https://127.0.0.1:{port}"
        ready = httpx.get(f"{https}/v2/health/ready", verify=str(certs.ca), timeout=5)
        assert ready.status_code == 200
        for name in ("localhost", "127.0.0.1"):  # both names the certificate holds
            url = f"https://{name}:{port}/v2/models/{MODEL}"
            answer = httpx.get(url, verify=str(certs.ca), timeout=5)
            assert answer.status_code == 200, answer.text
        # Unverified (no CA given): the system's trust store does not know this certificate.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{https}/v2/health/ready", timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5)
        pem = settings.deploy_dir / COPY / "endpoint.pem"
        assert stat.S_IMODE(os.stat(pem).st_mode) == 0o600
    finally:
        undeploy(settings, COPY)
