"""The receiver under attack, over real HTTP: `shipyard webhook serve` processes on 127.0.0.1
sending to the session's real Prefect server. A signed push whose `after` is not a commit id,
the same delivery twice at once (to one receiver or to two sharing a deliveries file), a body or
headers trickled a few bytes a second, more connections than allowed: each gets a 4xx (or is
closed), emits nothing (or once), and valid pushes keep being answered meanwhile."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deployments.test_webhook import (
    SECRET,
    allowed_env,
    events_for,
    github_headers,
    name_of,
    push_body,
    sentinel,
    stored,
)
from tests.deployments.test_webhook import (
    pooled_repo as unique_repo,  # the receiver processes allow these
)
from tests.support.projects import ROOT

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]

BODY_TIMEOUT_S = 3.0
HEAD_TIMEOUT_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def receivers(prefect_server: str, log_dir: Path, count: int, **env: str) -> Iterator[list[str]]:
    """`count` receivers started as a user does (`shipyard webhook serve`), all with `env`;
    yields their URLs once each answers /health."""
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    with ExitStack() as stack:
        for _i in range(count):
            port = free_port()
            log = stack.enter_context((log_dir / f"receiver-{port}.log").open("wb"))
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "shipyard"), "webhook", "serve"],
                cwd=ROOT,
                env={
                    **os.environ,
                    "PREFECT_API_URL": prefect_server,
                    "SHIPYARD_WEBHOOK_SECRET": SECRET,
                    "SHIPYARD_WEBHOOK_PROJECT": "model",
                    "SHIPYARD_WEBHOOK_PORT": str(port),
                    **allowed_env(),
                    **env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(process.wait, 30)
            stack.callback(process.terminate)
            started.append((process, f"http://127.0.0.1:{port}"))
        deadline = time.monotonic() + 60
        for process, url in started:
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert process.poll() is None, f"the receiver exited: see {log_dir}"
                assert time.monotonic() < deadline, f"the receiver did not start: see {log_dir}"
                time.sleep(0.2)
        yield [url for _, url in started]


@pytest.fixture(scope="module")
def pair(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two receivers sharing one deliveries file, with short body and header timeouts."""
    state = tmp_path_factory.mktemp("receivers")
    with receivers(
        prefect_server,
        state,
        2,
        SHIPYARD_WEBHOOK_DELIVERIES_FILE=str(state / "deliveries"),
        SHIPYARD_WEBHOOK_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        SHIPYARD_WEBHOOK_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
    ) as urls:
        yield urls


def send(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/hooks/git", content=body, headers=headers, timeout=30)


def with_after(repo: str, after: Any) -> bytes:
    import json

    payload = json.loads(push_body(repo))
    payload["after"] = after
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    "after",
    [
        "--upload-pack=touch /tmp/x",
        "main",
        "refs/heads/main",
        "HEAD~1",
        "a1b2c3d",  # a short sha
        "a" * 39,
        "a" * 41,
        "A" * 40,
        "g" * 40,
        "a" * 40 + "\n",
        "",
        40,
        None,
    ],
)
def test_a_signed_push_whose_after_is_not_a_full_commit_id_is_refused_and_emits_nothing(
    pair: list[str], after: Any
) -> None:
    marker = Path("/tmp/x")
    existed = marker.exists()
    repo = unique_repo()
    body = with_after(repo, after)
    answer = send(pair[0], body, github_headers(body, f"d-{uuid.uuid4().hex}"))
    assert answer.status_code == 400, answer.text
    [problem] = answer.json()["problems"]
    assert problem["field"] == "after"
    assert problem["expected"] == "a full commit id (40 or 64 lowercase hex digits)"
    assert "after: expected a full commit id" in answer.json()["error"]
    assert marker.exists() == existed
    mark = sentinel(repo)
    assert [str(event.id) for event in stored(repo)] == [mark]


def test_a_sha256_commit_id_is_released() -> None:
    """SHA-256 repositories name commits with 64 hex digits."""
    from tests.deployments.test_webhook import post

    repo = unique_repo()
    body = with_after(repo, "c0ffee" + "e" * 58)
    answer = post(body, github_headers(body, f"d-{uuid.uuid4().hex}"))
    assert answer.status_code == 202, answer.text
    [event] = events_for(repo)
    assert event.payload["sha"] == "c0ffee" + "e" * 58


def test_a_deleted_branch_is_acknowledged_and_releases_nothing(pair: list[str]) -> None:
    """What GitHub sends when a branch is deleted: `deleted`, an all-zero `after`, no commits.
    https://docs.github.com/en/webhooks/webhook-events-and-payloads#push"""
    import json

    repo = unique_repo()
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "b" * 40,
            "after": "0" * 40,
            "created": False,
            "deleted": True,
            "repository": {"clone_url": repo, "full_name": name_of(repo)},
            "commits": [],
            "head_commit": None,
        }
    ).encode()
    answer = send(pair[0], body, github_headers(body, f"d-{uuid.uuid4().hex}"))
    assert answer.status_code == 202, answer.text
    assert answer.json()["ignored"] == "the push deleted the branch"
    mark = sentinel(repo)
    assert [str(event.id) for event in stored(repo)] == [mark]


def at_once(urls: list[str], body: bytes, deliveries: list[str]) -> list[int]:
    """POST `body` to each url under its delivery id, all released together; the statuses."""
    barrier = threading.Barrier(len(urls))

    def one(url: str, delivery: str) -> int:
        headers = github_headers(body, delivery)
        with httpx.Client(timeout=30) as client:
            client.get(f"{url}/health")  # connected before the barrier: the posts race
            barrier.wait()
            return client.post(f"{url}/hooks/git", content=body, headers=headers).status_code

    with ThreadPoolExecutor(len(urls)) as pool:
        return sorted(pool.map(one, urls, deliveries))


@pytest.mark.parametrize(
    "case", ["one receiver", "two receivers sharing the deliveries file", "new delivery ids"]
)
def test_the_same_push_sent_twice_at_once_emits_once(pair: list[str], case: str) -> None:
    for _ in range(5):  # a race: several rounds
        repo = unique_repo()
        body = push_body(repo)
        delivery = f"d-{uuid.uuid4().hex}"
        if case == "one receiver":
            statuses = at_once([pair[0], pair[0]], body, [delivery, delivery])
        elif case == "two receivers sharing the deliveries file":
            statuses = at_once(pair, body, [delivery, delivery])
        else:  # a captured body replayed under another delivery id, to the other receiver
            statuses = at_once(pair, body, [delivery, f"{delivery}-again"])
        assert statuses == [202, 409]
        assert len(events_for(repo)) == 1


def test_a_trickled_body_gets_408_while_valid_pushes_are_answered(pair: list[str]) -> None:
    port = int(pair[0].rsplit(":", 1)[1])
    head = (
        b"POST /hooks/git HTTP/1.1\r\nHost: receiver\r\ncontent-type: application/json\r\n"
        b"x-github-event: push\r\nx-github-delivery: d-trickle\r\n"
        b"x-hub-signature-256: sha256=00\r\ncontent-length: 100\r\n\r\n"
    )
    answer: dict[str, Any] = {}

    def trickle() -> None:
        """Two bytes a second for 10 s (never the 100 declared), reading whatever comes back."""
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head)
            started = time.monotonic()
            received = b""
            while time.monotonic() - started < 10:
                try:
                    sock.sendall(b'{"')
                except OSError:  # closed by the receiver: this write met its reset
                    answer.setdefault("closed_after_s", time.monotonic() - started)
                    break
                if select.select([sock], [], [], 1.0)[0]:
                    try:
                        chunk = sock.recv(4096)
                    except OSError:  # a reset: bytes sent after the close met a closed socket
                        chunk = b""
                    answer.setdefault("after_s", time.monotonic() - started)
                    received += chunk
                    if not chunk:
                        answer["closed_after_s"] = time.monotonic() - started
                        break
            answer["received"] = received

    trickler = threading.Thread(target=trickle)
    trickler.start()
    latencies = []
    while trickler.is_alive():
        body = push_body(unique_repo())
        sent = time.monotonic()
        valid = send(pair[0], body, github_headers(body, f"d-{uuid.uuid4().hex}"))
        latencies.append(time.monotonic() - sent)
        assert valid.status_code == 202, valid.text
        time.sleep(0.3)
    trickler.join()
    assert answer["received"].startswith(b"HTTP/1.1 408 "), answer
    assert b"the body did not arrive within 3 s" in answer["received"]
    assert BODY_TIMEOUT_S <= answer["after_s"] < BODY_TIMEOUT_S + 1.5, answer
    assert answer["closed_after_s"] < BODY_TIMEOUT_S + 1.5, answer  # `connection: close`
    assert len(latencies) >= 5 and max(latencies) < 1.0, latencies
    print(
        f"trickler answered 408 after {answer['after_s']:.1f} s; {len(latencies)} pushes "
        f"answered meanwhile, slowest {max(latencies) * 1000:.0f} ms"
    )


@pytest.mark.parametrize("sent", [b"", b"POST /hooks/git HTTP/1.1\r\nHost: rec"])
def test_a_connection_that_trickles_its_headers_is_closed(pair: list[str], sent: bytes) -> None:
    port = int(pair[0].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 10:
            try:
                sock.sendall(b"e")  # one byte of a header name a second
            except OSError:
                closed_after = time.monotonic() - started
                break
            if select.select([sock], [], [], 1.0)[0]:
                try:
                    ended = not sock.recv(4096)
                except ConnectionResetError:  # closed with our last byte unread: a reset
                    ended = True
                if ended:
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None, "the connection was still open after 10 s"
        assert closed_after < HEAD_TIMEOUT_S + 1.5, closed_after
    assert httpx.get(f"{pair[0]}/health", timeout=5).status_code == 200


def test_more_connections_than_allowed_get_503_until_the_slow_ones_time_out(
    prefect_server: str, tmp_path: Path
) -> None:
    with receivers(
        prefect_server,
        tmp_path,
        1,
        SHIPYARD_WEBHOOK_MAX_CONNECTIONS="3",
        # Long enough that the slow bodies still hold their connections when the full push
        # arrives on a loaded machine; the freed connection is then waited for, not slept on.
        SHIPYARD_WEBHOOK_BODY_TIMEOUT_S="6",
    ) as [url]:
        port = int(url.rsplit(":", 1)[1])
        head = (
            b"POST /hooks/git HTTP/1.1\r\nHost: receiver\r\ncontent-type: application/json\r\n"
            b"x-github-event: push\r\ncontent-length: 100\r\n\r\n{"
        )
        # uvicorn counts the request's own connection: a limit of 3 serves 2 at once. Each slow
        # request is sent alone, so that it is read while fewer than 3 connections are open.
        slow: list[socket.socket] = []
        try:
            for _ in range(2):
                slow.append(socket.create_connection(("127.0.0.1", port)))
                slow[-1].sendall(head)
                time.sleep(0.3)
            answered = [sock for sock in slow if select.select([sock], [], [], 0)[0]]
            assert not answered, "a slow request was answered before the limit was reached"
            body = push_body(unique_repo())
            full = send(url, body, github_headers(body, f"d-{uuid.uuid4().hex}"))
            assert (full.status_code, full.text) == (503, "Service Unavailable")
            # The slow bodies' 408s free their connections: a push is then answered.
            repo = unique_repo()
            body = push_body(repo)
            deadline = time.monotonic() + 20
            while (
                freed := send(url, body, github_headers(body, f"d-{uuid.uuid4().hex}"))
            ).text == "Service Unavailable" and time.monotonic() < deadline:  # uvicorn's limit
                time.sleep(0.5)
            assert freed.status_code == 202, freed.text
            assert len(events_for(repo)) == 1
        finally:
            for sock in slow:
                sock.close()
