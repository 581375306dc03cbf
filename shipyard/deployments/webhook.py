"""The webhook receiver: signed git pushes in, Prefect events out (`shipyard webhook serve`).

Prefect's own webhooks exist only in Prefect Cloud; this is the self-hosted equivalent. A push
that is signed, new, from a repository in `allowed_sources`, on one of its branches and touching
one of its paths becomes one Prefect event, `shipyard.model.pushed`, carrying the entry's clone
URL (never one from the payload), branch, sha and the project path; the `release` deployment's
trigger (prefect.yaml) turns it into a flow run with those parameters. The receiver answers 202
as soon as the event is queued; everything else gets a 4xx and starts nothing.

Trust (`shipyard/trust.py`): a push names its repository (GitHub `repository.full_name`, GitLab
`project.path_with_namespace`); one not in `allowed_sources` gets 403, and with no
`allowed_sources` at all every push gets 403 saying how to configure them. A push to another
branch or touching none of the entry's paths gets 202 `ignored: …`. A commit is remembered as
`<url>@<ref>@<before>..<after>@<pushed_at>` (GitHub's push time; GitLab sends none): a
captured body resent under a new delivery id is a replay (409), while a branch force-pushed
back to an earlier commit is a new push and releases it again (the release itself skips a
commit that is no longer its branch's tip). Without a push time, pushing the same
`before..after` twice (main X→Y, back to X, X→Y again) is taken for a replay.

- GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, `X-GitHub-Event`,
  `X-GitHub-Delivery`. https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
- GitLab: `X-Gitlab-Token: <secret>`, `X-Gitlab-Event: Push Hook`, `X-Gitlab-Event-UUID`.
  https://docs.gitlab.com/user/project/integrations/webhooks/
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shipyard import trust
from shipyard.settings import AllowedSource, Settings

EVENT = "shipyard.model.pushed"
log = logging.getLogger("shipyard.webhook")
LISTED_COMMITS = 20
MAX_DEPTH = 32
"""JSON nesting a push may have; GitHub's and GitLab's push payloads nest about 5 levels."""
FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
REPOSITORY = re.compile(r"[\w.-]+(/[\w.-]+)+")
UNCONFIGURED = (
    "no allowed_sources are configured, so the receiver releases nothing: list the "
    "repositories it may release in shipyard.toml ([[allowed_sources]] with repository, url, "
    "models) or in SHIPYARD_ALLOWED_SOURCES (JSON), then restart the receiver"
)
UNAVAILABLE = (
    "the release system is unavailable: nothing was released and the delivery is not "
    "remembered; redeliver it later"
)
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
    project: str = Field(
        default="", description="Model project directory in the repository ('' = its root)."
    )
    paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Globs of changed paths that release (comma-separated) for an "
        "allowed_sources entry that names no `paths`; default: everything under `project`.",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    body_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a request may take to send its body; a slower one gets 408. GitHub "
        "and GitLab give up on a delivery after 10 s, so a slower body is lost anyway.",
    )
    head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a request's headers (after opening "
        "or after its previous answer) before it is closed.",
    )
    max_connections: int = Field(
        default=64,
        ge=2,
        description="Open connections at which a request gets 503, its own connection included "
        "(uvicorn's limit_concurrency): at most this many minus one are served at once.",
    )
    deliveries_file: Path | None = Field(
        default=None,
        description="Where delivery ids are remembered across restarts; default: memory only.",
    )

    @field_validator("paths", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def globs(self) -> list[str]:
        if self.paths:
            return self.paths
        return [f"{self.project.strip('/')}/*"] if self.project.strip("/") else ["*"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where, what was expected, and what came instead."""

    field: str
    expected: str
    got: str = ""

    def __str__(self) -> str:
        return f"{self.field}: expected {self.expected}" + (f", got {self.got}" if self.got else "")


class Refused(Exception):
    """A request answered with a 4xx/5xx and nothing emitted; the message is the answer's body, so
    it says what was wrong with the request and never names the receiver's internals."""

    def __init__(self, status: int, message: str, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.problems:
            body["problems"] = [
                {"field": p.field, "expected": p.expected, "got": p.got} for p in self.problems
            ]
        return body


@dataclass(frozen=True)
class Push:
    provider: str
    delivery: str
    repository: str
    """The repository's name on its host (`owner/name`), matched against `allowed_sources`."""
    ref: str
    sha: str
    changed: tuple[str, ...]
    truncated: bool = False
    """The payload lists only part of the push's commits (so `changed` may miss paths)."""
    pusher: str = ""
    """Who pushed, as the git host names them (for the audit trail; not checked)."""
    before: str = ""
    """The branch's commit before the push ("" when the payload does not say)."""
    pushed_at: str = ""
    """When it was pushed, if the payload says (GitHub's `repository.pushed_at`)."""
    repo: str = ""
    """The clone URL the release checks out: the allowed entry's, set once matched."""

    @property
    def branch(self) -> str:
        return self.ref.removeprefix("refs/heads/")


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
    """The push a verified body describes; `Refused(400)` names every field that is missing or
    of the wrong shape, and what it should be."""
    delivery = headers.get(
        "x-github-delivery" if provider == "github" else "x-gitlab-event-uuid", ""
    )
    if not delivery:
        raise Refused(400, "no delivery id (X-GitHub-Delivery / X-Gitlab-Event-UUID)")
    payload = _json(body)
    problems: list[Problem] = []
    owner, key = (
        ("repository", "full_name") if provider == "github" else ("project", "path_with_namespace")
    )
    repository = _string(
        payload, (owner, key), REPOSITORY, "a repository name (owner/name)", problems
    )
    ref = _string(
        payload, ("ref",), re.compile(r"refs/\S+"), "a git ref (refs/heads/<branch>)", problems
    )
    sha = _string(
        payload, ("after",), FULL_SHA, "a full commit id (40 or 64 lowercase hex digits)", problems
    )
    before = ""
    if payload.get("before") is not None:
        before = _string(payload, ("before",), FULL_SHA, "a full commit id, or no field", problems)
    changed, commits = _changed(payload.get("commits"), problems)
    total = payload.get("total_commits_count", commits)
    if type(total) is not int or total < 0:
        problems.append(Problem("total_commits_count", "a count of commits", _shown(total)))
    if problems:
        raise Refused(
            400, "malformed push payload: " + "; ".join(map(str, problems)), tuple(problems)
        )
    # Both providers list at most 20 commits: a longer push may change the model unseen.
    truncated = commits >= LISTED_COMMITS or total > commits
    return Push(
        provider,
        delivery,
        repository,
        ref,
        sha,
        changed,
        truncated,
        _pusher(provider, payload),
        before,
        _pushed_at(payload),
    )


def _pushed_at(payload: dict[str, Any]) -> str:
    """GitHub's `repository.pushed_at` (the push's time, signed with the body); "" when absent
    (GitLab sends none) or not a number."""
    repository = payload.get("repository")
    found = repository.get("pushed_at") if isinstance(repository, dict) else None
    return str(found) if type(found) is int else ""


def _pusher(provider: str, payload: dict[str, Any]) -> str:
    """GitHub's `pusher.name`, GitLab's `user_username`; "" when absent or not a short string."""
    found = (
        (payload.get("pusher") or {}).get("name")
        if provider == "github" and isinstance(payload.get("pusher"), dict)
        else payload.get("user_username")
    )
    return found if isinstance(found, str) and 0 < len(found) <= 100 else ""


def _json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object no deeper than `MAX_DEPTH`."""
    too_deep = Problem("body", f"JSON nested at most {MAX_DEPTH} levels deep", "deeper")
    try:
        payload = json.loads(body)
    except RecursionError:  # the decoder's own guard, long before MAX_DEPTH matters
        raise Refused(400, f"malformed push payload: {too_deep}", (too_deep,)) from None
    except ValueError as e:  # includes bytes that are not UTF-8
        where = (
            f" ({e.msg} at line {e.lineno} column {e.colno})"
            if isinstance(e, json.JSONDecodeError)
            else ""
        )
        problem = Problem("body", "a JSON object", f"invalid JSON{where}")
        raise Refused(400, f"malformed push payload: {problem}", (problem,)) from None
    if _depth(payload) > MAX_DEPTH:
        raise Refused(400, f"malformed push payload: {too_deep}", (too_deep,))
    if not isinstance(payload, dict):
        problem = Problem("body", "a JSON object", _shown(payload))
        raise Refused(400, f"malformed push payload: {problem}", (problem,))
    return payload


def _depth(value: object) -> int:
    """How deep lists and objects nest in a decoded JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        )
        if children is not None:
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level + 1) for child in children)
    return deepest


def _shown(value: object) -> str:
    """A short description of a value that came where another was expected."""
    if value is None:
        return "nothing"
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _string(
    payload: dict[str, Any],
    path: tuple[str, ...],
    pattern: re.Pattern[str],
    expected: str,
    problems: list[Problem],
) -> str:
    value: Any = payload
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        problems.append(Problem(".".join(path), expected, _shown(value)))
        return ""
    return value


def _changed(commits: object, problems: list[Problem]) -> tuple[tuple[str, ...], int]:
    """The paths the listed commits add, modify or remove, and how many commits are listed."""
    if commits is None:
        return (), 0
    if not isinstance(commits, list):
        problems.append(Problem("commits", "an array of commit objects", _shown(commits)))
        return (), 0
    changed: list[str] = []
    for i, commit in enumerate(commits):
        if not isinstance(commit, dict):
            problems.append(Problem(f"commits[{i}]", "a commit object", _shown(commit)))
            continue
        for key in ("added", "modified", "removed"):
            paths = commit.get(key) or []
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                problems.append(Problem(f"commits[{i}].{key}", "an array of paths", _shown(paths)))
            else:
                changed.extend(paths)
    return tuple(changed), len(commits)


def allowed_entry(push: Push, sources: Settings) -> AllowedSource:
    """The `allowed_sources` entry of the push's repository; `Refused(403)` when there is
    none (or no list at all)."""
    if not sources.allowed_sources:
        raise Refused(403, UNCONFIGURED)
    entry = trust.entry_for_repository(push.repository, sources)
    if entry is None:
        raise Refused(
            403,
            f"repository {push.repository!r} is not in allowed_sources: nothing was released. "
            "Its operator adds an [[allowed_sources]] entry (repository, url, models) to release "
            "it",
        )
    return entry


def ignored(push: Push, entry: AllowedSource, settings: WebhookSettings) -> str | None:
    """Why this push of an allowed repository starts no release, or None."""
    if set(push.sha) == {"0"}:
        return "the push deleted the branch"
    if not push.ref.startswith("refs/heads/"):
        return f"{push.ref} is not a watched branch ({', '.join(entry.branches)})"
    return trust.push_ignored(entry, push.branch, push.changed, push.truncated, settings.globs())


class Deliveries:
    """Delivery ids and pushed commits already received: in memory and, optionally, in a file
    that several receivers share (one key a line, only ever appended).

    `reserve` claims keys before the event is sent, so two deliveries of one push arriving at
    once emit once: in this process through a set of keys in flight, across processes through an
    fcntl lock on one byte of `<file>.lock` per key. The kernel drops such a lock when its
    process dies, so a crashed receiver leaves no reservation behind."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self._seen: set[str] = set()
        self._read = 0  # bytes of the file already read: it is re-read from there
        self._in_flight: set[str] = set()

    def _refresh(self) -> None:
        if self.file is None or not self.file.is_file():
            return
        with self.file.open("rb") as f:
            f.seek(self._read)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being appended right now waits
        self._read += len(complete)
        self._seen.update(complete.decode(errors="replace").split())

    def __contains__(self, key: str) -> bool:
        self._refresh()
        return key in self._seen

    @contextmanager
    def reserve(self, *keys: str) -> Iterator[Reservation]:
        """Claim `keys` for the block, or raise `Refused(409)` if any was received before or is
        being received now. The block calls `keep` once it has acted on them; keys it did not
        keep are free again when it ends (a redelivery after a failed emit is not a replay)."""
        for key in keys:
            if key in self:
                raise Refused(409, f"{key} was received before: replay ignored")
        claimed: list[str] = []
        try:
            for key in keys:
                if not self._claim(key):
                    raise Refused(409, f"{key} is being received right now: duplicate ignored")
                claimed.append(key)
            for key in keys:  # another receiver may have kept it before this one claimed it
                if key in self:
                    raise Refused(409, f"{key} was received before: replay ignored")
            yield Reservation(self)
        finally:
            for key in claimed:
                self._unclaim(key)

    def keep(self, keys: tuple[str, ...]) -> None:
        self._seen.update(keys)
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            line = "".join(f"{key}\n" for key in keys).encode()
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one append: other receivers never read half of it
            finally:
                os.close(fd)

    def _claim(self, key: str) -> bool:
        if key in self._in_flight:
            return False
        if self.file is not None and not _byte_locks(self.file).acquire(_offset(key)):
            return False
        self._in_flight.add(key)
        return True

    def _unclaim(self, key: str) -> None:
        self._in_flight.discard(key)
        if self.file is not None:
            _byte_locks(self.file).release(_offset(key))


@dataclass
class Reservation:
    deliveries: Deliveries

    def keep(self, *keys: str) -> None:
        """Remember `keys` as received, for good."""
        self.deliveries.keep(keys)


def _offset(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:5], "big")


class _ByteLocks:
    """The byte locks this process holds on one lock file. fcntl locks belong to a process, not
    to a descriptor: a second descriptor would neither conflict with the first's locks nor keep
    its own when the first is closed, so the process opens each lock file once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held: set[int] = set()
        self.mutex = threading.Lock()

    def acquire(self, offset: int) -> bool:
        with self.mutex:
            if offset in self.held:
                return False
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except OSError:  # another process holds it
                return False
            self.held.add(offset)
            return True

    def release(self, offset: int) -> None:
        with self.mutex:
            if offset in self.held:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, offset)
                self.held.discard(offset)


_LOCKS: dict[Path, _ByteLocks] = {}
_LOCKS_MUTEX = threading.Lock()


def _byte_locks(deliveries_file: Path) -> _ByteLocks:
    path = deliveries_file.absolute().with_name(deliveries_file.name + ".lock")
    with _LOCKS_MUTEX:
        if path not in _LOCKS:
            _LOCKS[path] = _ByteLocks(path)
        return _LOCKS[path]


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
        log.error("PREFECT_API_URL is not set: delivery %s answered 503", push.delivery)
        raise Refused(503, UNAVAILABLE)
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
            "repository": push.repository,
            "ref": push.branch,
            "sha": push.sha,
            "subdir": settings.project.strip("/"),
            "provider": push.provider,
            "delivery": push.delivery,
            "pusher": push.pusher,
        },
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"{push.provider}:{push.delivery}"),
    )
    try:
        # checkpoint_every=1: the emit waits for the server's answer to a ping after the event,
        # so a 202 means the server has it, not only that it was written to a socket.
        async with get_events_client(reconnection_attempts=2, checkpoint_every=1) as client:
            await client.emit(event)
    except Exception as e:
        # The details are the operator's, not the sender's: logged here, absent from the answer.
        log.error(
            "Prefect at %s did not take the event of delivery %s: %s: %s",
            PREFECT_API_URL.value(),
            push.delivery,
            type(e).__name__,
            e,
        )
        raise Refused(503, UNAVAILABLE) from e
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
        sources: Settings | None = None,
    ) -> None:
        self.settings = settings or WebhookSettings()
        self.sources = sources or Settings()
        """Where `allowed_sources` come from (shipyard.toml, SHIPYARD_ALLOWED_SOURCES)."""
        if not self.sources.allowed_sources:
            log.warning("every push will get 403: %s", UNCONFIGURED)
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
            status, body = e.status, e.body()
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            status, body = 500, {"error": "internal error: nothing was released; redeliver it"}
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json")]
        if status in (408, 413):  # the body was not read to its end: the connection is unusable
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
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
        try:
            entry = allowed_entry(push, self.sources)
        except Refused:
            log.warning("refused delivery %s of %r: not allowed", push.delivery, push.repository)
            raise
        push = dataclasses.replace(push, repo=entry.url)
        # A captured body resent under a new delivery id is signed too: the push is the key.
        # `before` (and GitHub's push time) are part of it, so a force-push back to an earlier
        # commit, or pushing a commit again after that, is a new push.
        commit = f"{push.repo}@{push.ref}@{push.before}..{push.sha}@{push.pushed_at}"
        with self.deliveries.reserve(push.delivery, commit) as reservation:
            reason = ignored(push, entry, self.settings)
            if reason:
                reservation.keep(push.delivery)
                return 202, {"ignored": reason, "delivery": push.delivery}
            event_id = await self.emitter(push, self.settings)
            # Kept only once emitted: a redelivery after a failed emit still releases.
            reservation.keep(push.delivery, commit)
        return 202, {"event": EVENT, "event_id": event_id, "sha": push.sha, "ref": push.ref}

    async def _body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > limit:
            raise Refused(413, f"body of {declared} bytes exceeds the limit of {limit}")
        timeout = self.settings.body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self._read(receive, limit)
        except TimeoutError:
            raise Refused(408, f"the body did not arrive within {timeout:g} s") from None

    @staticmethod
    async def _read(receive: Receive, limit: int) -> bytes:
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


def head_timeout_protocol(head_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (h11), closing a connection whose request headers are not
    complete `head_timeout_s` after it opened or after its previous answer. uvicorn has no such
    timeout (https://github.com/Kludex/uvicorn/issues/157) and its keep-alive timer stops at the
    first byte, so a client trickling headers would hold its connection for ever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(head_timeout_s, self._expire)

        def _expire(self) -> None:
            # IDLE: no request's headers complete since the timer was armed.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.warning(
                    "closed a connection from %s: no request headers in %g s",
                    self.client,
                    head_timeout_s,
                )
                self.transport.close()

    return HeadTimeoutProtocol


def serve(settings: WebhookSettings | None = None) -> None:
    import uvicorn

    settings = settings or WebhookSettings()
    uvicorn.run(
        WebhookApp(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        http=head_timeout_protocol(settings.head_timeout_s),
        limit_concurrency=settings.max_connections,
    )
