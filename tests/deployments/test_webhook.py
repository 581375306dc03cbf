"""The webhook receiver: signed pushes become Prefect events on the real server; nothing else does."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from shipyard.deployments.webhook import (
    EVENT,
    UNAVAILABLE,
    Push,
    WebhookApp,
    WebhookSettings,
    emit,
)
from shipyard.settings import AllowedSource, Settings

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]

SECRET = "s3cret-for-tests"
FILE_ROOT = Path("/srv/git")


def name_of(repo: str) -> str:
    """The repository name a host sends for the test repository at clone URL `repo`."""
    return f"team/{Path(urlsplit(repo).path).stem}"


def allowed(repo: str, **rules: Any) -> AllowedSource:
    return AllowedSource(repository=name_of(repo), url=repo, models=["digits-sklearn"], **rules)


RECEIVER_POOL = [f"file://{FILE_ROOT}/{uuid.uuid4().hex}.git" for _ in range(150)]
"""Repositories the receiver processes of these tests allow (their environment is fixed when
they start): `pooled_repo` hands them out one by one."""
_pooled = iter(RECEIVER_POOL)
SOURCES = Settings(
    allowed_sources=[allowed(repo) for repo in RECEIVER_POOL], allowed_file_root=FILE_ROOT
)
"""The allow-list of in-process receivers; `unique_repo` adds to it."""


def allowed_env() -> dict[str, str]:
    """SHIPYARD_ALLOWED_SOURCES and _FILE_ROOT for a receiver process: the pool."""
    return {
        "SHIPYARD_ALLOWED_SOURCES": json.dumps(
            [
                allowed(repo).model_dump(include={"repository", "url", "models"})
                for repo in RECEIVER_POOL
            ]
        ),
        "SHIPYARD_ALLOWED_FILE_ROOT": str(FILE_ROOT),
    }


def push_body(
    repo: str,
    ref: str = "refs/heads/main",
    changed: str = "model/train.py",
    after: str = "a" * 40,
    before: str | None = None,
) -> bytes:
    payload: dict[str, Any] = {
        "ref": ref,
        "after": after,
        "repository": {"clone_url": repo, "full_name": name_of(repo)},
        "project": {"git_http_url": repo, "path_with_namespace": name_of(repo)},
        "commits": [{"added": [], "modified": [changed], "removed": []}],
    }
    if before is not None:
        payload["before"] = before
    return json.dumps(payload).encode()


def github_headers(body: bytes, delivery: str, secret: str = SECRET) -> dict[str, str]:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": delivery,
        "x-hub-signature-256": f"sha256={signature}",
    }


class CountingEmitter:
    """The receiver's real `emit`, counted: every call still sends its event to the server."""

    def __init__(self) -> None:
        self.deliveries: list[str] = []

    async def __call__(self, push: Push, settings: WebhookSettings) -> str:
        self.deliveries.append(push.delivery)
        return await emit(push, settings)


def post(
    body: bytes,
    headers: dict[str, str],
    emitter: Any = emit,
    sources: Settings = SOURCES,
    **settings: Any,
) -> httpx.Response:
    app = WebhookApp(
        WebhookSettings(secret=SecretStr(SECRET), project="model", **settings),  # type: ignore[arg-type]
        emitter,
        sources,
    )

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            return await client.post("/hooks/git", content=body, headers=headers)

    return asyncio.run(call())


def stored(repo: str) -> list[Any]:
    """The events the server has stored for `repo` now."""
    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[EVENT]),
                resource=EventResourceFilter(id=[f"shipyard.repo.{repo}"]),
            ),
            limit=50,  # the client's default (100) is over the server's maximum
        )
    return list(page.events)


def sentinel(repo: str, ref: str = "refs/heads/main", changed: str = "model/sentinel.py") -> str:
    """Send one accepted push for `repo` through a fresh receiver and wait until the server has
    stored its event; returns the event's id. The server persists events in the order it takes
    them, so whatever was emitted for `repo` before the sentinel is stored by then too."""
    EventsWorker.drain_all()  # anything this process queued in the background goes first
    body = push_body(repo, ref, changed)
    answer = post(body, github_headers(body, f"sentinel-{uuid.uuid4().hex}"))
    assert answer.status_code == 202, answer.text
    event_id = answer.json()["event_id"]
    deadline = time.monotonic() + 30
    while event_id not in {str(event.id) for event in stored(repo)}:
        assert time.monotonic() < deadline, f"the sentinel event {event_id} was not stored in 30 s"
        time.sleep(0.25)
    return str(event_id)


def events_for(repo: str, wait_s: float = 8) -> list[Any]:
    """The events the server stored for `repo`, waiting a little for ingestion."""
    EventsWorker.drain_all()
    found: list[Any] = []
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not found:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[EVENT]),
                    resource=EventResourceFilter(id=[f"shipyard.repo.{repo}"]),
                ),
                limit=50,  # the client's default (100) is over the server's maximum
            )
            found = list(page.events)
            time.sleep(0.5)
    return found


def unique_repo() -> str:
    """A repository no other test uses, allowed for in-process receivers (`SOURCES`)."""
    repo = f"file://{FILE_ROOT}/{uuid.uuid4().hex}.git"
    SOURCES.allowed_sources.append(allowed(repo))
    return repo


def pooled_repo() -> str:
    """A repository no other test uses, allowed for receiver processes too (`allowed_env`)."""
    return next(_pooled)


def test_a_signed_github_push_becomes_one_event_with_the_release_parameters() -> None:
    repo = unique_repo()
    body = push_body(repo)
    answer = post(body, github_headers(body, "d-1"))
    assert answer.status_code == 202, answer.text
    [event] = events_for(repo)
    assert str(event.id) == answer.json()["event_id"]
    assert event.payload["source"] == repo and event.payload["ref"] == "main"
    assert event.payload["sha"] == "a" * 40 and event.payload["subdir"] == "model"


def test_a_gitlab_push_with_its_token_is_accepted() -> None:
    repo = unique_repo()
    body = push_body(repo)
    headers = {
        "content-type": "application/json",
        "x-gitlab-event": "Push Hook",
        "x-gitlab-event-uuid": "g-1",
        "x-gitlab-token": SECRET,
    }
    assert post(body, headers).status_code == 202
    assert len(events_for(repo)) == 1


def _forged(body: bytes) -> dict[str, str]:
    return github_headers(body, "d-forged", secret="not-the-secret")


def _unsigned(body: bytes) -> dict[str, str]:
    return {k: v for k, v in github_headers(body, "d-u").items() if k != "x-hub-signature-256"}


def _gitlab_wrong(body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-gitlab-event": "Push Hook",
        "x-gitlab-event-uuid": "g-2",
        "x-gitlab-token": "guess",
    }


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("unsigned", 401, "X-Hub-Signature-256 is missing"),
        ("forged", 401, "does not match the body"),
        ("gitlab wrong token", 401, "X-Gitlab-Token does not match"),
        ("oversized", 413, "exceeds the limit"),
        ("malformed json", 400, "malformed push payload"),
        ("no repository", 400, "repository.full_name: expected a repository name (owner/name)"),
        ("not json", 415, "application/json"),
        ("no provider", 400, "not a GitHub or GitLab webhook"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem_and_emit_nothing(
    case: str, status: int, message: str
) -> None:
    repo = unique_repo()
    body = push_body(repo)
    headers = github_headers(body, f"d-{case}")
    if case == "unsigned":
        headers = _unsigned(body)
    elif case == "forged":
        headers = _forged(body)
    elif case == "gitlab wrong token":
        headers = _gitlab_wrong(body)
    elif case == "oversized":
        body = body + b" " * 2048
        headers = github_headers(body, "d-big")
    elif case == "malformed json":
        body = body[:-5]
        headers = github_headers(body, "d-mal")
    elif case == "no repository":
        body = json.dumps({"ref": "refs/heads/main", "after": "b" * 40}).encode()
        headers = github_headers(body, "d-norepo")
    elif case == "not json":
        headers = {**headers, "content-type": "application/x-www-form-urlencoded"}
    elif case == "no provider":
        headers = {k: v for k, v in headers.items() if k != "x-github-event"}
    emitted = CountingEmitter()
    answer = post(body, headers, emitter=emitted, max_body_bytes=1024)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert events_for(repo, wait_s=2) == []
    assert emitted.deliveries == []
    mark = sentinel(repo)
    assert [str(event.id) for event in stored(repo)] == [mark]


def test_a_replayed_delivery_is_refused_and_emits_no_second_event(tmp_path: Any) -> None:
    repo = unique_repo()
    body = push_body(repo)
    remembered = tmp_path / "deliveries"
    emitted = CountingEmitter()
    first = post(body, github_headers(body, "d-once"), emitted, deliveries_file=remembered)
    assert first.status_code == 202
    # a restarted receiver still knows the delivery
    again = post(body, github_headers(body, "d-once"), emitted, deliveries_file=remembered)
    assert again.status_code == 409 and "received before" in again.json()["error"]
    assert len(events_for(repo)) == 1
    # The replay would carry the same event id (the store would drop it): count at the receiver.
    assert emitted.deliveries == ["d-once"]
    mark = sentinel(repo)
    assert sorted(str(event.id) for event in stored(repo)) == sorted(
        [first.json()["event_id"], mark]
    )


@pytest.mark.parametrize(
    ("ref", "changed", "reason"),
    [
        (
            "refs/heads/feature",
            "model/train.py",
            "refs/heads/feature is not a watched branch (main)",
        ),
        ("refs/tags/v1", "model/train.py", "not a watched branch"),
        ("refs/heads/main", "docs/README.md", "no changed path matches ['model/*']"),
    ],
)
def test_pushes_that_do_not_touch_the_model_are_acknowledged_and_ignored(
    ref: str, changed: str, reason: str
) -> None:
    repo = unique_repo()
    body = push_body(repo, ref, changed)
    emitted = CountingEmitter()
    answer = post(body, github_headers(body, f"d-{uuid.uuid4().hex}"), emitted)
    assert answer.status_code == 202 and reason in answer.json()["ignored"]
    assert events_for(repo, wait_s=2) == []
    assert emitted.deliveries == []
    mark = sentinel(repo)
    assert [str(event.id) for event in stored(repo)] == [mark]


def test_the_receiver_refuses_to_start_without_a_secret() -> None:
    with pytest.raises(ValueError, match="SHIPYARD_WEBHOOK_SECRET is not set"):
        WebhookApp(WebhookSettings(secret=None))


def test_a_signed_body_resent_under_a_new_delivery_id_is_a_replay() -> None:
    repo = unique_repo()
    body = push_body(repo)
    emitted = CountingEmitter()
    app = WebhookApp(WebhookSettings(secret=SecretStr(SECRET), project="model"), emitted, SOURCES)

    async def send(delivery: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            return await client.post(
                "/hooks/git", content=body, headers=github_headers(body, delivery)
            )

    original = asyncio.run(send("d-original"))
    assert original.status_code == 202
    replay = asyncio.run(send("d-new-id"))
    assert replay.status_code == 409 and "a" * 40 in replay.json()["error"]
    assert len(events_for(repo)) == 1
    assert emitted.deliveries == ["d-original"]
    mark = sentinel(repo)
    assert sorted(str(event.id) for event in stored(repo)) == sorted(
        [original.json()["event_id"], mark]
    )


def test_a_push_listing_only_part_of_its_commits_releases_even_without_a_model_path() -> None:
    repo = unique_repo()
    payload = json.loads(push_body(repo, changed="docs/README.md"))
    payload["commits"] = payload["commits"] * 20  # GitHub and GitLab list at most 20
    body = json.dumps(payload).encode()
    assert post(body, github_headers(body, "d-long")).status_code == 202
    assert len(events_for(repo)) == 1


def test_a_push_prefect_does_not_take_is_a_503_and_its_redelivery_releases(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    repo = unique_repo()
    body = push_body(repo)
    remembered = tmp_path / "deliveries"
    with socket.socket() as closed:  # a port nothing listens on: the Prefect server is down
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/api"
    with (
        temporary_settings({PREFECT_API_URL: down}),
        caplog.at_level(logging.ERROR, logger="shipyard.webhook"),
    ):
        refused = post(body, github_headers(body, "d-down"), deliveries_file=remembered)
    assert refused.status_code == 503, refused.text
    # It says what to do, and nothing of the receiver's internals (the URL, the exception).
    assert refused.json() == {"error": UNAVAILABLE}
    assert "redeliver" in refused.text and "127.0.0.1" not in refused.text
    assert f"Prefect at {down} did not take the event of delivery d-down" in caplog.text
    # GitHub redelivers the same delivery once Prefect is back: it is not a replay.
    again = post(body, github_headers(body, "d-down"), deliveries_file=remembered)
    assert again.status_code == 202, again.text
    assert len(events_for(repo)) == 1
