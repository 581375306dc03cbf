"""The stack's Prefect server takes credentials: one auth string, generated once.

The server runs with `PREFECT_SERVER_API_AUTH_STRING` (HTTP Basic on every API route but
`/api/health` and `/api/ready`; the events websockets check it in their first message), CSRF
protection on and CORS limited to its own UI's origin. Its clients (the worker and the flow
runs it starts, the webhook receiver, `prefect deploy`, the `shipyard` CLI) get
`PREFECT_API_AUTH_STRING`: Prefect's client then sends it as Basic auth, fetches a CSRF token
before every change (`PREFECT_CLIENT_CSRF_SUPPORT_ENABLED`, on by default) and authenticates
its events websocket with it. The UI asks for the string once and keeps it in the browser's
local storage (`prefect-password`, base64). https://docs.prefect.io/v3/advanced/security-settings

The string lives in `prefect-auth` in the stack directory (mode 600); it goes to the services
through their supervisord program files (mode 600), never on a command line.
"""

from __future__ import annotations

import base64
import os
import secrets
import uuid
from collections.abc import MutableMapping
from pathlib import Path

import httpx

from shipyard.errors import StackError
from shipyard.settings import Settings
from shipyard.stack import state as stack_state

USER = "shipyard"


def auth_file(settings: Settings) -> Path:
    return settings.stack_dir / "prefect-auth"


def stack_api(settings: Settings) -> str:
    """The API URL of the stack's own Prefect server."""
    return f"http://{settings.services_host}:{settings.prefect_port}/api"


def ui_origin(settings: Settings) -> str:
    """The only origin whose pages may call the stack's Prefect API (CORS): its own UI."""
    return f"http://{settings.services_host}:{settings.prefect_port}"


def prefect_auth(settings: Settings) -> str:
    """The auth string of the stack's Prefect server (`shipyard:<random>`), generated on first
    use into `prefect-auth` (mode 600)."""
    path = auth_file(settings)
    stack_state.private_dir(settings)
    stack_state.create_private(path, f"{USER}:{secrets.token_urlsafe(32)}\n")
    auth = path.read_text().strip()
    if ":" not in auth or '"' in auth or "\\" in auth:
        raise StackError(
            f"{path} holds no auth string of the form user:password (without quotes or "
            "backslashes): delete it and run `shipyard stack up`, which writes a new one."
        )
    return auth


def read_prefect_auth(settings: Settings) -> str | None:
    """The stack's auth string if the stack has one (no file: None, nothing is written)."""
    try:
        return auth_file(settings).read_text().strip() or None
    except OSError:
        return None


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of the stack's Prefect server: credentials, CSRF, CORS."""
    return {
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth(settings),
        "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": ui_origin(settings),
    }


def basic_auth_header(auth: str) -> dict[str, str]:
    """The `Authorization` header a Prefect server with `auth` as its auth string accepts."""
    return {"Authorization": f"Basic {base64.b64encode(auth.encode()).decode()}"}


def use_stack_prefect(
    settings: Settings, environ: MutableMapping[str, str], answers: bool | None = None
) -> str | None:
    """Point this process's Prefect client at the stack's server, with its credentials.

    With no PREFECT_API_URL, the stack's server is used when it answers (`answers`, else
    asked); with PREFECT_API_URL naming the stack's server (as `make demo` sets it), only the
    credentials are added. Another server is left alone, and so is a PREFECT_API_AUTH_STRING
    already set. Returns the API URL now in force, if any."""
    api = stack_api(settings)
    configured = environ.get("PREFECT_API_URL", "").rstrip("/")
    if not configured:
        if answers is None:
            answers = _health(api)
        if not answers:
            return None
        environ["PREFECT_API_URL"] = configured = api
    if configured == api and not environ.get("PREFECT_API_AUTH_STRING"):
        auth = read_prefect_auth(settings)
        if auth:
            environ["PREFECT_API_AUTH_STRING"] = auth
    return configured


def _health(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def client_env(settings: Settings, api: str) -> dict[str, str]:
    """PREFECT_API_AUTH_STRING for a client of `api`: the stack's for the stack's server, the
    environment's for a server the user configured (a team's), else nothing."""
    if api == stack_api(settings):
        return {"PREFECT_API_AUTH_STRING": prefect_auth(settings)}
    given = os.environ.get("PREFECT_API_AUTH_STRING")
    return {"PREFECT_API_AUTH_STRING": given} if given else {}


def http_client(settings: Settings) -> httpx.Client:
    """A plain HTTP client of the stack's Prefect API, as Prefect's own client is: Basic auth
    with the stack's string, and a CSRF token for changes (a `/filter` query is a POST too).
    For scripts and tests that read the API without Prefect's client; close it when done
    (it is already open: not a `with` block, `contextlib.closing` is)."""
    api = stack_api(settings)
    client = httpx.Client(headers=basic_auth_header(prefect_auth(settings)), timeout=10)
    name = f"shipyard-{uuid.uuid4()}"
    try:
        answer = client.get(f"{api}/csrf-token", params={"client": name})
        answer.raise_for_status()
    except httpx.HTTPError as e:
        client.close()
        raise StackError(
            f"The stack's Prefect server at {api} gave no CSRF token ({e}): is it up "
            "(`shipyard stack status`), and does prefect-auth hold its auth string?"
        ) from e
    client.headers.update(
        {"Prefect-Csrf-Token": answer.json()["token"], "Prefect-Csrf-Client": name}
    )
    return client
