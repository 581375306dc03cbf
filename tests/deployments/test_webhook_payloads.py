"""Malformed signed bodies: every one gets a 400 naming each field that is wrong and what it
should be, never a 500, and emits nothing. Named shapes first, then fuzzed ones (hypothesis,
seeded by tests/support/fuzz.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from shipyard.deployments.webhook import MAX_DEPTH, WebhookApp, WebhookSettings
from tests.deployments.test_webhook import (
    SECRET,
    SOURCES,
    CountingEmitter,
    github_headers,
    post,
    push_body,
    sentinel,
    stored,
    unique_repo,
)
from tests.support import fuzz

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]


def nested(depth: int) -> Any:
    value: Any = "model/train.py"
    for _ in range(depth):
        value = {"a": value}
    return value


def changed(repo: str, **fields: Any) -> bytes:
    """A valid push for `repo` with `fields` replaced (None: removed)."""
    payload = json.loads(push_body(repo))
    payload.update(fields)
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


COMMIT = {"added": [], "modified": ["model/train.py"], "removed": []}
CASES: list[tuple[str, Any, list[str]]] = [
    # (case, body bytes or the fields to change, the fields the 400 names)
    ("nested arrays, 500 000 deep", b"[" * 500_000 + b"]" * 500_000, ["body"]),
    ("a field nested past the limit", {"extra": nested(MAX_DEPTH + 1)}, ["body"]),
    ("an array", b"[]", ["body"]),
    ("a string", b'"push"', ["body"]),
    ("not UTF-8", b"\xff\xfe{}", ["body"]),
    ("commits of strings", {"commits": ["abc", COMMIT]}, ["commits[0]"]),
    ("commits of numbers", {"commits": [COMMIT, 1, None]}, ["commits[1]", "commits[2]"]),
    ("commits an object", {"commits": {"a": COMMIT}}, ["commits"]),
    ("added a string", {"commits": [{**COMMIT, "added": "x.py"}]}, ["commits[0].added"]),
    ("modified numbers", {"commits": [{"modified": [1, 2]}]}, ["commits[0].modified"]),
    ("repository a string", {"repository": "x"}, ["repository.full_name"]),
    ("no repository", {"repository": None}, ["repository.full_name"]),
    (
        "an option as repository name",
        {"repository": {"full_name": "--upload-pack=touch /tmp/x"}},
        ["repository.full_name"],
    ),
    ("before a branch", {"before": "main"}, ["before"]),
    ("ref a list", {"ref": ["refs/heads/main"]}, ["ref"]),
    ("ref not a ref", {"ref": "main"}, ["ref"]),
    ("a count as text", {"total_commits_count": "3"}, ["total_commits_count"]),
    ("a count as boolean", {"total_commits_count": True}, ["total_commits_count"]),
    ("no ref, a branch as after", {"ref": None, "after": "main"}, ["ref", "after"]),
]


@pytest.mark.parametrize(("case", "change", "fields"), CASES, ids=[case for case, _, _ in CASES])
def test_a_malformed_signed_push_is_a_400_naming_every_wrong_field(
    case: str, change: Any, fields: list[str]
) -> None:
    repo = unique_repo()
    body = change if isinstance(change, bytes) else changed(repo, **change)
    emitted = CountingEmitter()
    answer = post(body, github_headers(body, f"d-{uuid.uuid4().hex}"), emitted)
    assert answer.status_code == 400, answer.text
    problems = answer.json()["problems"]
    assert [p["field"] for p in problems] == fields
    assert all(p["expected"] for p in problems)
    for p in problems:
        assert f"{p['field']}: expected {p['expected']}" in answer.json()["error"]
    assert emitted.deliveries == []
    mark = sentinel(repo)
    assert [str(event.id) for event in stored(repo)] == [mark]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
PATHS: list[tuple[str | int, ...]] = [
    (),
    ("ref",),
    ("after",),
    ("repository",),
    ("repository", "full_name"),
    ("before",),
    ("commits",),
    ("commits", 0),
    ("commits", 0, "added"),
    ("commits", 0, "modified", 0),
    ("total_commits_count",),
]


def replaced(payload: Any, path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    payload[head] = replaced(payload[head], tuple(rest), value) if rest else value
    return payload


@seed(fuzz.SEED)
@settings(
    max_examples=fuzz.EXAMPLES,
    deadline=None,
    database=None,  # the printed seed alone decides the examples
    suppress_health_check=[HealthCheck.too_slow],
)
@given(junk=JSON, path=st.sampled_from(PATHS), raw=st.binary(max_size=64))
def test_fuzzed_signed_bodies_never_get_a_500(
    junk: Any, path: tuple[str | int, ...], raw: bytes
) -> None:
    """Random JSON in one field of an otherwise valid push, and random bytes: a 202 that emitted,
    a 400 naming a field under the one changed, or (another repository name) a 403, the last
    two having emitted nothing."""
    repo = unique_repo()
    emitted = CountingEmitter()
    app = WebhookApp(WebhookSettings(secret=SecretStr(SECRET), project="model"), emitted, SOURCES)
    bodies = [json.dumps(replaced(json.loads(push_body(repo)), path, junk)).encode(), raw]

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            return [
                await client.post(
                    "/hooks/git", content=body, headers=github_headers(body, uuid.uuid4().hex)
                )
                for body in bodies
            ]

    fuzzed, random_bytes = asyncio.run(send_all())
    assert random_bytes.status_code == 400, (raw, random_bytes.text)
    assert fuzzed.status_code in (202, 400, 403), (path, junk, fuzzed.text)
    if fuzzed.status_code == 403:
        assert path[:1] in ((), ("repository",)), (path, fuzzed.text)
        assert emitted.deliveries == []
    elif fuzzed.status_code == 400:
        fields = [p["field"] for p in fuzzed.json()["problems"]]
        top = str(path[0]) if path else ""
        assert fields and all(f.startswith(top) or f == "body" for f in fields), (path, fields)
        assert emitted.deliveries == []
    else:
        assert len(emitted.deliveries) == 1 or "ignored" in fuzzed.json(), fuzzed.text
