"""Oversized bodies sent straight to a real server (no proxy in front): a client that sends the
whole body before reading, as urllib does, reads the 413; a body beyond the drain caps is cut off
without the server buffering it, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.project import Dataset
from tests.support.servers import Server, rows, start_server

pytestmark = pytest.mark.unit

LIMIT = 1 << 20  # the default limit and drain cap, stated so the sizes below read against them
DRAIN = 8 << 20
DRAIN_TIMEOUT_S = 1.0  # shorter than the default 5 s: the trickle test waits it out
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[Server]:
    running = start_server(
        bundle, max_body_bytes=LIMIT, max_drain_bytes=DRAIN, drain_timeout_s=DRAIN_TIMEOUT_S
    )
    yield running
    running.stop()


def post(url: str, data: bytes | Iterator[bytes]) -> urllib.error.HTTPError:
    """POST with urllib (which asks `Connection: close` and never `Expect: 100-continue`)."""
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    return raised.value


def pieces(total: int, size: int = 64 << 10) -> Iterator[bytes]:
    """`total` bytes in pieces: urllib sends an iterable without a length chunked."""
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def assert_body_413(error: urllib.error.HTTPError) -> None:
    assert error.code == 413
    answer = json.loads(error.read())
    assert answer["field"] == "body"
    assert answer["expected"] == f"at most {LIMIT} bytes"
    assert str(LIMIT) in answer["error"]


def peak_rss(server: Server) -> int:
    """The server process's peak resident memory in bytes (VmHWM)."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def assert_serving(server: Server, digits: Dataset) -> None:
    answer = httpx.post(f"{server.url}/invocations", json={"inputs": rows(digits, 2)}, timeout=5)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("size", [2 * LIMIT, 4 * LIMIT, DRAIN])
def test_urllib_reads_the_413_for_a_body_over_the_limit_with_content_length(
    server: Server, digits: Dataset, size: int
) -> None:
    for _ in range(5):
        assert_body_413(post(server.url, b"x" * size))
    assert_serving(server, digits)


@pytest.mark.parametrize("size", [LIMIT + 1, 3 * LIMIT, DRAIN])
def test_urllib_reads_the_413_for_a_chunked_body_over_the_limit(
    server: Server, digits: Dataset, size: int
) -> None:
    for _ in range(5):
        assert_body_413(post(server.url, pieces(size)))
    assert_serving(server, digits)


def test_a_keep_alive_client_reuses_the_connection_after_a_drained_413(
    server: Server, digits: Dataset
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    connection.request("POST", "/invocations", body=b"x" * (2 * LIMIT), headers=headers)
    refused = connection.getresponse()
    assert refused.status == 413 and refused.getheader("connection") is None
    refused.read()
    body = json.dumps({"inputs": rows(digits, 1)}).encode()
    connection.request("POST", "/invocations", body=body, headers=headers)
    assert connection.getresponse().status == 200
    connection.close()


def send_until_cut_off(url: str, total: int, chunked: bool) -> tuple[int, bytes]:
    """Send a `total`-byte body over a raw socket until the server stops it; the bytes sent
    and whatever answer could be read."""
    host, port = url.removeprefix("http://").split(":")
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % total
    piece = b"x" * MiB
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + framing
            + b"\r\n\r\n"
        )
        try:
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            answer = sock.recv(65536)
        except OSError:  # reset or broken pipe: the server closed with the body unread
            answer = b""
    return sent, answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_far_beyond_the_drain_cap_is_cut_off_without_being_buffered(
    server: Server, digits: Dataset, chunked: bool
) -> None:
    assert_serving(server, digits)  # warm: the first inference allocates
    before = peak_rss(server)
    total = 256 * MiB
    sent, answer = send_until_cut_off(server.url, total, chunked)
    assert sent < total, "the server read a body far beyond its drain cap"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Memory bound: at most the limit (and a read buffer) beyond the peak before, never the body.
    assert peak_rss(server) - before < LIMIT + 8 * MiB
    assert_serving(server, digits)


def test_a_trickled_oversized_body_is_answered_within_the_drain_time(
    server: Server, digits: Dataset
) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    over = b"x" * (LIMIT + 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(over), over)
        )
        start = time.monotonic()
        sock.settimeout(0.05)
        answer = b""
        while time.monotonic() - start < 10:  # a byte at a time, never ending the body
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                sock.sendall(b"1\r\nx\r\n")
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert DRAIN_TIMEOUT_S * 0.9 < elapsed < DRAIN_TIMEOUT_S + 2
    assert_serving(server, digits)
