"""Prefect's clients over a plain-HTTP API skip the CA bundle they would never use; an HTTPS API
or a configured certificate file keeps what it has."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import pytest

from shipyard.stack.plain_http import NO_CA

pytestmark = pytest.mark.unit

SHOW = """
from shipyard.stack import plain_http
from prefect.settings import PREFECT_API_SSL_CERT_FILE
print(plain_http.skip_ca_bundle(), PREFECT_API_SSL_CERT_FILE.value())
"""


def _in_a_process(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    done = subprocess.run(
        [sys.executable, "-c", SHOW], env={**clean, **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_a_plain_http_api_gets_the_one_certificate_file_that_trusts_nothing() -> None:
    assert _in_a_process(
        PREFECT_API_URL="http://127.0.0.1:4200/api",
        SSL_CERT_FILE="/etc/ssl/certs/ca-certificates.crt",
    ) == ["True", NO_CA]
    # It loads as a CA file (Prefect's client builds its context from it) and holds one
    # certificate, whose key nobody has.
    context = ssl.create_default_context(cafile=NO_CA)
    assert len(context.get_ca_certs()) == 1


def test_an_https_api_or_a_configured_file_is_left_as_it_is() -> None:
    assert _in_a_process(PREFECT_API_URL="https://prefect.example/api", SSL_CERT_FILE="/x.pem") == [
        "False",
        "/x.pem",
    ]
    assert _in_a_process(
        PREFECT_API_URL="http://127.0.0.1:4200/api", PREFECT_API_SSL_CERT_FILE="/team-ca.pem"
    ) == ["False", "/team-ca.pem"]
