"""Each answer leaves the server in one write, and HTTP/1.1 on the connection still works: keep-alive,
HEAD, `Expect: 100-continue`, pipelining, `Connection: close`.

A real uvicorn server with the app and `OneWriteProtocol`, on 127.0.0.1 in a thread of this process,
so that what the protocol hands the connection's real transport (uvloop's) can be seen: a spy
between the two records each call.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import uvicorn

from shipyard.project import Dataset
from shipyard_serving.app import create_app
from shipyard_serving.config import ServeSettings
from shipyard_serving.wire import OneWriteProtocol
from tests.support.servers import KEY, free_port, rows

pytestmark = pytest.mark.unit

AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


class _Spy:
    """The real transport, with each write or writelines recorded as the bytes it was given."""

    calls: ClassVar[list[bytes]] = []

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        _Spy.calls.append(bytes(data))
        self._transport.write(data)

    def writelines(self, parts: Any) -> None:
        parts = list(parts)
        _Spy.calls.append(b"".join(parts))
        self._transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _SpiedProtocol(OneWriteProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Spy(transport))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def port(bundle: Path) -> Iterator[int]:
    settings = ServeSettings(
        model_dir=bundle, workers=1, api_keys=[KEY], max_body_bytes=4096, max_drain_bytes=4096
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=_SpiedProtocol,
        lifespan="on",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=30)


def _answers() -> list[bytes]:
    """The recorded writes since the last call, once the server has made them."""
    time.sleep(0.1)
    calls, _Spy.calls[:] = list(_Spy.calls), []
    return calls


def _read_answer(sock: socket.socket, buffer: bytearray, head_only: bool = False) -> bytes:
    """One answer from `sock` (bytes past it stay in `buffer`): status line, headers, body."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-answer after {bytes(buffer)!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:end]).split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    total = end + (0 if head_only else length)
    while len(buffer) < total:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        buffer += chunk
    answer = bytes(buffer[:total])
    del buffer[:total]
    return answer


def test_every_answer_on_a_keep_alive_connection_is_one_write(port: int, digits: Dataset) -> None:
    _answers()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    for method, path, body in [
        ("POST", "/invocations", {"inputs": rows(digits, 2)}),
        ("GET", "/v2/health/ready", None),
        ("HEAD", "/v2/health/ready", None),  # uvicorn writes no body: the head alone
        ("POST", "/invocations", {"inputs": "not rows"}),  # a 400 with its error
        ("POST", "/invocations", {"inputs": rows(digits, 1)}),
    ]:
        connection.request(method, path, body=json.dumps(body) if body else None, headers=AUTH)
        answer = connection.getresponse()
        text = answer.read()
        statuses.append(answer.status)
        if path == "/invocations" and answer.status == 200:
            assert len(json.loads(text)["predictions"]["label"]) == len(body["inputs"])  # type: ignore[index]
    connection.close()
    assert statuses == [200, 200, 405, 400, 200]
    writes = _answers()
    assert [w[:12] for w in writes] == [
        b"HTTP/1.1 200",
        b"HTTP/1.1 200",
        b"HTTP/1.1 405",
        b"HTTP/1.1 400",
        b"HTTP/1.1 200",
    ], "one write per answer, head and body together"
    for write in (w for w in writes if not w.startswith(b"HTTP/1.1 405")):
        head, _, body = write.partition(b"\r\n\r\n")
        assert f"content-length: {len(body)}".encode() in head.lower()


def test_100_continue_goes_out_before_the_body_is_sent(port: int, digits: Dataset) -> None:
    _answers()
    body = json.dumps({"inputs": rows(digits, 1)}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Expect: 100-continue\r\n\r\n"
        )
        buffer = bytearray()
        interim = _read_answer(sock, buffer, head_only=True)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # not held until a body that never comes
        sock.sendall(body)
        final = _read_answer(sock, buffer)
    assert final.startswith(b"HTTP/1.1 200") and b'"label"' in final
    assert [w[:12] for w in _answers()] == [b"HTTP/1.1 100", b"HTTP/1.1 200"]


def test_pipelined_requests_and_connection_close(port: int) -> None:
    _answers()
    ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(ready + ready + b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        buffer = bytearray()
        answers = [_read_answer(sock, buffer) for _ in range(3)]
        assert sock.recv(1) == b"", "the server closes after the answer to `Connection: close`"
    assert [a.split(b"\r\n\r\n")[1] for a in answers] == [b'{"ready":true}'] * 2 + [b"\n"]
    assert b"connection: close" in answers[2].lower()
    assert _answers() == answers


def test_a_refused_body_gets_its_413_in_one_write_and_the_connection_closes(port: int) -> None:
    _answers()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Declared past both the limit and the drain budget: answered at once, then closed.
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 100000\r\n\r\n".encode()
        )
        buffer = bytearray()
        answer = _read_answer(sock, buffer)
        assert sock.recv(1) == b""
    assert answer.startswith(b"HTTP/1.1 413") and b'"field":"body"' in answer
    assert _answers() == [answer]
