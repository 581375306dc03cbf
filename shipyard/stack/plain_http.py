"""Prefect's client over plain HTTP without loading a CA bundle it never uses.

Every Prefect client (`get_client()`, the events client's version check) builds a TLS context
with `PREFECT_API_SSL_CERT_FILE`, else certifi's whole bundle, whatever the API's scheme: about
35 ms a client on this machine, and a run's engine opens some fifteen of them (its sync and async
clients, the log worker, the events client, the suspension observer), so about half a second of
each run before its first stage. When the API is `http://` (the stack's own server on loopback)
and `PREFECT_API_SSL_CERT_FILE` is not set (Prefect's default for it is `SSL_CERT_FILE`, the
system's bundle where that is set), `no-ca.pem` is named instead: one self-signed certificate
whose key was discarded when it was made, so it can never make a TLS connection trusted, and it
loads in about a millisecond. An `https://` API, or a configured file, is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from importlib.resources import files

NO_CA = str(files("shipyard.stack").joinpath("no-ca.pem"))


def no_ca_in(environ: MutableMapping[str, str]) -> bool:
    """Name `NO_CA` in `environ` when its `PREFECT_API_URL` is plain HTTP and no certificate file
    is set: the same choice as `skip_ca_bundle`, made before Prefect's settings are read, so that
    they are read once. True if it did."""
    url = environ.get("PREFECT_API_URL", "")
    if not url.startswith("http://") or environ.get("PREFECT_API_SSL_CERT_FILE"):
        return False
    environ["PREFECT_API_SSL_CERT_FILE"] = NO_CA
    return True


def skip_ca_bundle() -> bool:
    """Name `NO_CA` as Prefect's certificate file when its API is plain HTTP and none is set
    (Prefect's settings re-read); True if it did."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or ""
    if not url.startswith("http://") or os.environ.get("PREFECT_API_SSL_CERT_FILE"):
        return False
    os.environ["PREFECT_API_SSL_CERT_FILE"] = NO_CA
    prefect.context.refresh_global_settings_context()
    return True
