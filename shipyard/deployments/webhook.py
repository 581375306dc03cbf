"""The webhook receiver: signed git pushes in, Prefect events out (`shipyard webhook serve`).

Prefect's own webhooks exist only in Prefect Cloud; this is the self-hosted equivalent. A push
that is signed, new, on a watched branch and touching a model path becomes one Prefect event,
`shipyard.model.pushed`, carrying repo, ref, sha and the project path; the `release`
deployment's trigger (prefect.yaml) turns it into a flow run with those parameters. The receiver
answers 202 as soon as the event is queued; everything else gets a 4xx and starts nothing.

- GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, `X-GitHub-Event`,
  `X-GitHub-Delivery`. https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
- GitLab: `X-Gitlab-Token: <secret>`, `X-Gitlab-Event: Push Hook`, `X-Gitlab-Event-UUID`.
  https://docs.gitlab.com/user/project/integrations/webhooks/
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EVENT = "shipyard.model.pushed"
log = logging.getLogger("shipyard.webhook")
LISTED_COMMITS = 20
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class WebhookSettings(BaseSettings):
    """`SHIPYARD_WEBHOOK_*` variables."""

    model_config = SettingsConfigDict(env_prefix="SHIPYARD_WEBHOOK_", extra="ignore")

    secret: SecretStr | None = Field(
        default=None, description="Shared secret of the GitHub/GitLab webhook (required)."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    branches: Annotated[list[str], NoDecode] = Field(
        default=["main"], description="Branches whose pushes release (comma-separated)."
    )
    project: str = Field(
        default="", description="Model project directory in the repository ('' = its root)."
    )
    paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Globs of changed paths that release (comma-separated); default: "
        "everything under `project`.",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    deliveries_file: Path | None = Field(
        default=None,
        description="Where delivery ids are remembered across restarts; default: memory only.",
    )

    @field_validator("branches", "paths", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def globs(self) -> list[str]:
        if self.paths:
            return self.paths
        return [f"{self.project.strip('/')}/*"] if self.project.strip("/") else ["*"]


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Push:
    provider: str
    delivery: str
    repo: str
    """The clone URL the release checks out."""
    ref: str
    sha: str
    changed: tuple[str, ...]
    truncated: bool = False
    """The payload lists only part of the push's commits (so `changed` may miss paths)."""


def verify(provider: str, headers: dict[str, str], body: bytes, secret: str) -> None:
    """Raise `Refused(401)` unless the request carries this secret's signature (constant time)."""
    if provider == "github":
        signature = headers.get("x-hub-signature-256", "")
        if not signature:
            raise Refused(401, "unsigned: X-Hub-Signature-256 is missing")
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise Refused(401, "bad signature: X-Hub-Signature-256 does not match the body")
    else:
        token = headers.get("x-gitlab-token", "")
        if not token:
            raise Refused(401, "unsigned: X-Gitlab-Token is missing")
        if not hmac.compare_digest(token.encode(), secret.encode()):
            raise Refused(401, "bad token: X-Gitlab-Token does not match")


def provider_of(headers: dict[str, str]) -> str:
    if "x-github-event" in headers:
        return "github"
    if "x-gitlab-event" in headers:
        return "gitlab"
    raise Refused(400, "not a GitHub or GitLab webhook: no X-GitHub-Event or X-Gitlab-Event")


def parse_push(provider: str, headers: dict[str, str], body: bytes) -> Push:
    """The push a verified body describes; `Refused(400)` names what is missing."""
    delivery = headers.get(
        "x-github-delivery" if provider == "github" else "x-gitlab-event-uuid", ""
    )
    if not delivery:
        raise Refused(400, "no delivery id (X-GitHub-Delivery / X-Gitlab-Event-UUID)")
    try:
        payload = json.loads(body)
        repository = payload["repository"] if provider == "github" else payload["project"]
        repo = repository["clone_url"] if provider == "github" else repository["git_http_url"]
        ref, sha = payload["ref"], payload["after"]
        commits = payload.get("commits") or []
        changed = tuple(
            path
            for commit in commits
            for key in ("added", "modified", "removed")
            for path in commit.get(key) or []
        )
        # Both providers list at most 20 commits: a longer push may change the model unseen.
        total = payload.get("total_commits_count", len(commits))
        truncated = len(commits) >= LISTED_COMMITS or total > len(commits)
    except (ValueError, KeyError, TypeError) as e:
        raise Refused(400, f"malformed push payload: {type(e).__name__}: {e}") from e
    if not all(isinstance(v, str) and v for v in (repo, ref, sha)):
        raise Refused(400, "malformed push payload: repository URL, ref and after must be strings")
    return Push(provider, delivery, repo, ref, sha, changed, truncated)


def ignored(push: Push, settings: WebhookSettings) -> str | None:
    """Why this push starts no release, or None."""
    if set(push.sha) == {"0"}:
        return "the push deleted the branch"
    branch = push.ref.removeprefix("refs/heads/")
    if not push.ref.startswith("refs/heads/") or branch not in settings.branches:
        return f"{push.ref} is not a watched branch ({', '.join(settings.branches)})"
    globs = settings.globs()
    if push.truncated:
        return None  # cannot tell which paths changed: release (a cached one costs little)
    if not any(fnmatch.fnmatch(path, glob) for path in push.changed for glob in globs):
        return f"no changed path matches {globs}"
    return None


class Deliveries:
    """Delivery ids and commits seen, in memory and optionally in a file (one per line), read
    on first use."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self._seen: set[str] | None = None

    @property
    def seen(self) -> set[str]:
        if self._seen is None:
            file = self.file
            self._seen = set(file.read_text().split()) if file and file.is_file() else set()
        return self._seen

    def __contains__(self, key: str) -> bool:
        return key in self.seen

    def add(self, *keys: str) -> None:
        self.seen.update(keys)
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self.file.open("a") as out:
                out.writelines(f"{key}\n" for key in keys)


async def emit(push: Push, settings: WebhookSettings) -> str:
    """Send the event the `release` deployment's trigger reacts to; returns its id.

    The event is sent on a connection of its own and awaited, not queued for a background
    sender (as `prefect.events.emit_event` does): a Prefect server that is down is a 503 to the
    webhook's sender, which redelivers later, and the delivery is not remembered.
    """
    from prefect.events import Event, Resource
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise Refused(503, "PREFECT_API_URL is not set: there is no Prefect server to release on")
    event = Event(
        event=EVENT,
        resource=Resource(
            {
                "prefect.resource.id": f"shipyard.repo.{push.repo}",
                "prefect.resource.name": push.repo,
            }
        ),
        payload={
            "source": push.repo,
            "ref": push.ref.removeprefix("refs/heads/"),
            "sha": push.sha,
            "subdir": settings.project.strip("/"),
            "provider": push.provider,
            "delivery": push.delivery,
        },
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"{push.provider}:{push.delivery}"),
    )
    try:
        # checkpoint_every=1: the emit waits for the server's answer to a ping after the event,
        # so a 202 means the server has it, not only that it was written to a socket.
        async with get_events_client(reconnection_attempts=2, checkpoint_every=1) as client:
            await client.emit(event)
    except Exception as e:
        raise Refused(
            503,
            f"Prefect at {PREFECT_API_URL.value()} did not take the event ({type(e).__name__}: "
            f"{e}); nothing was released and the delivery is not remembered: redeliver it",
        ) from e
    return str(event.id)


async def warm_up() -> None:
    """Import Prefect's events client and connect once at startup, so that the first push is
    answered in milliseconds rather than after seconds of imports. A Prefect server that does not
    answer yet is only logged: pushes get 503 until it does."""
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        log.warning("PREFECT_API_URL is not set: every push will get 503 until it is")
        return
    try:
        async with get_events_client(reconnection_attempts=0):
            pass
    except Exception as e:
        log.warning("Prefect at %s does not answer yet (%s)", PREFECT_API_URL.value(), e)


class WebhookApp:
    """ASGI app: `POST /hooks/git` (GitHub or GitLab push), `GET /health`."""

    def __init__(
        self,
        settings: WebhookSettings | None = None,
        emitter: Callable[[Push, WebhookSettings], Awaitable[str]] = emit,
    ) -> None:
        self.settings = settings or WebhookSettings()
        if self.settings.secret is None or not self.settings.secret.get_secret_value():
            raise ValueError(
                "SHIPYARD_WEBHOOK_SECRET is not set: the receiver refuses to run unsigned. "
                "Set it to the secret configured on the GitHub/GitLab webhook."
            )
        self.emitter = emitter
        self.deliveries = Deliveries(self.settings.deliveries_file)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                if self.emitter is emit:
                    await warm_up()
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        try:
            status, body = await self.handle(scope, receive)
        except Refused as e:
            status, body = e.status, {"error": e.message}
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        path, method = scope["path"], scope["method"]
        if path == "/health":
            return 200, {"ok": True}
        if path != "/hooks/git":
            raise Refused(404, f"no route {path}; webhooks go to POST /hooks/git")
        if method != "POST":
            raise Refused(405, f"{method} is not allowed on /hooks/git; use POST")
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in scope["headers"]}
        if not headers.get("content-type", "").startswith("application/json"):
            raise Refused(415, "content type must be application/json (the webhook's JSON format)")
        body = await self._body(receive, headers)
        provider = provider_of(headers)
        assert self.settings.secret is not None
        verify(provider, headers, body, self.settings.secret.get_secret_value())
        kind = headers.get("x-github-event") or headers.get("x-gitlab-event")
        if kind == "ping":
            return 200, {"pong": True}
        if kind not in ("push", "Push Hook"):
            return 202, {"ignored": f"{kind} events release nothing; only pushes do"}
        push = parse_push(provider, headers, body)
        # A captured body resent under a new delivery id is signed too: the commit is the key.
        commit = f"{push.repo}@{push.ref}@{push.sha}"
        for key in (push.delivery, commit):
            if key in self.deliveries:
                raise Refused(409, f"{key} was received before: replay ignored")
        reason = ignored(push, self.settings)
        if reason:
            self.deliveries.add(push.delivery)
            return 202, {"ignored": reason, "delivery": push.delivery}
        event_id = await self.emitter(push, self.settings)
        # Remembered only once emitted: a redelivery after a failed emit still releases.
        self.deliveries.add(push.delivery, commit)
        return 202, {"event": EVENT, "event_id": event_id, "sha": push.sha, "ref": push.ref}

    async def _body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > limit:
            raise Refused(413, f"body of {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refused(400, "the client disconnected before the body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


def serve(settings: WebhookSettings | None = None) -> None:
    import uvicorn

    settings = settings or WebhookSettings()
    uvicorn.run(WebhookApp(settings), host=settings.host, port=settings.port, log_level="info")
