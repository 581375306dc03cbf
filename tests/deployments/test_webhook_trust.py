"""The receiver's trust boundary on the real Prefect server: only repositories in
`allowed_sources` release, only on their branches and paths, always from the entry's URL; a
branch force-pushed back releases again while a resent body does not."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from shipyard.deployments.webhook import UNCONFIGURED
from shipyard.settings import Settings
from tests.deployments.test_webhook import (
    FILE_ROOT,
    SOURCES,
    CountingEmitter,
    allowed,
    events_for,
    github_headers,
    post,
    push_body,
    sentinel,
    stored,
    unique_repo,
)

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]


def test_a_push_from_a_repository_not_allowed_is_403_and_emits_nothing() -> None:
    repo = f"file://{FILE_ROOT}/{uuid.uuid4().hex}.git"  # not added to SOURCES
    body = push_body(repo)
    emitted = CountingEmitter()
    answer = post(body, github_headers(body, f"d-{uuid.uuid4().hex}"), emitted)
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert "is not in allowed_sources" in error and "[[allowed_sources]]" in error
    assert emitted.deliveries == []
    assert events_for(repo, wait_s=2) == []


def test_with_no_allowed_sources_every_push_is_403_saying_how_to_configure() -> None:
    repo = unique_repo()
    body = push_body(repo)
    emitted = CountingEmitter()
    answer = post(body, github_headers(body, "d-unconfigured"), emitted, sources=Settings())
    assert answer.status_code == 403, answer.text
    assert answer.json() == {"error": UNCONFIGURED}
    assert "SHIPYARD_ALLOWED_SOURCES" in UNCONFIGURED and "shipyard.toml" in UNCONFIGURED
    assert emitted.deliveries == []
    mark = sentinel(repo)  # the same push, allowed: it is only the configuration
    assert [str(event.id) for event in stored(repo)] == [mark]


def test_the_event_carries_the_entrys_url_never_the_payloads() -> None:
    repo = unique_repo()
    payload = json.loads(push_body(repo))
    payload["repository"]["clone_url"] = "https://evil.example/attacker/model.git"
    body = json.dumps(payload).encode()
    answer = post(body, github_headers(body, f"d-{uuid.uuid4().hex}"))
    assert answer.status_code == 202, answer.text
    [event] = events_for(repo)
    assert event.payload["source"] == repo
    assert event.payload["repository"] == allowed(repo).repository
    assert "evil" not in json.dumps(event.payload)


@pytest.mark.parametrize(
    ("ref", "changed", "outcome"),
    [
        ("refs/heads/release/1.2", "models/digits/train.py", "event"),
        ("refs/heads/main", "models/digits/train.py", "refs/heads/main is not a watched branch"),
        ("refs/heads/release/1.2", "docs/index.md", "no changed path matches ['models/digits/*']"),
    ],
)
def test_the_entrys_branch_globs_and_paths_decide(ref: str, changed: str, outcome: str) -> None:
    repo = f"file://{FILE_ROOT}/{uuid.uuid4().hex}.git"
    SOURCES.allowed_sources.append(allowed(repo, branches=["release/*"], paths=["models/digits/*"]))
    body = push_body(repo, ref, changed)
    emitted = CountingEmitter()
    answer = post(body, github_headers(body, f"d-{uuid.uuid4().hex}"), emitted)
    assert answer.status_code == 202, answer.text
    if outcome == "event":
        [event] = events_for(repo)
        assert event.payload["ref"] == "release/1.2" and event.payload["source"] == repo
        return
    assert outcome in answer.json()["ignored"]
    assert emitted.deliveries == []
    mark = sentinel(repo, "refs/heads/release/9", "models/digits/sentinel.py")
    assert [str(event.id) for event in stored(repo)] == [mark]


def test_a_force_push_back_to_an_earlier_commit_releases_again_and_a_resent_body_does_not(
    tmp_path: Path,
) -> None:
    repo = unique_repo()
    x, y = "1" * 40, "2" * 40
    remembered = tmp_path / "deliveries"
    emitted = CountingEmitter()
    sent = {
        "push x": push_body(repo, after=x, before="0" * 40),
        "push y": push_body(repo, after=y, before=x),
        "force back to x": push_body(repo, after=x, before=y),
    }
    statuses = {
        what: post(body, github_headers(body, f"d-{what}"), emitted, deliveries_file=remembered)
        for what, body in sent.items()
    }
    assert {what: a.status_code for what, a in statuses.items()} == dict.fromkeys(sent, 202)
    assert emitted.deliveries == ["d-push x", "d-push y", "d-force back to x"]
    for what, body in sent.items():  # captured bodies, resent under new delivery ids
        again = post(
            body, github_headers(body, f"d-{uuid.uuid4().hex}"), emitted, deliveries_file=remembered
        )
        assert again.status_code == 409 and "received before" in again.json()["error"], what
    mark = sentinel(repo)
    shas = sorted(e.payload["sha"] for e in stored(repo) if str(e.id) != mark)
    assert shas == sorted([x, y, x])


def test_a_commit_pushed_again_after_a_force_push_back_is_a_new_push_by_its_push_time(
    tmp_path: Path,
) -> None:
    """main X→Y, forced back to X, then X→Y again: the same before..after, told apart by
    GitHub's signed `repository.pushed_at`."""
    repo = unique_repo()
    x, y = "1" * 40, "2" * 40
    remembered = tmp_path / "deliveries"

    def pushed(at: int) -> bytes:
        payload = json.loads(push_body(repo, after=y, before=x))
        payload["repository"]["pushed_at"] = at
        return json.dumps(payload).encode()

    first, again = pushed(1_700_000_000), pushed(1_700_000_600)
    for body, delivery, status in (
        (first, "d-first", 202),
        (again, "d-again", 202),
        (again, "d-again-resent", 409),
    ):
        answer = post(body, github_headers(body, delivery), deliveries_file=remembered)
        assert answer.status_code == status, (delivery, answer.text)
