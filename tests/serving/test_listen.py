"""The listener's port checks, on real sockets (the servers that use it: test_operations.py)."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from shipyard_serving import listen


def listener(*options: int) -> socket.socket:
    sock = socket.socket()
    for option in options:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.unit
def test_a_port_another_reuse_port_server_listens_on_is_refused(caplog) -> None:
    other = listener(socket.SO_REUSEADDR, socket.SO_REUSEPORT)  # another server's worker
    port = other.getsockname()[1]
    with other, pytest.raises(SystemExit) as exited:
        listen._hold("127.0.0.1", port)
    assert exited.value.code == 3  # uvicorn's startup failure
    assert f"cannot listen on 127.0.0.1 port {port}: [Errno 98] Address already in use" in (
        caplog.text
    )


@pytest.mark.unit
def test_after_a_server_without_reuse_port_its_time_wait_does_not_hold_the_port(caplog) -> None:
    previous = listener(socket.SO_REUSEADDR)  # uvicorn's own socket
    port = previous.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = previous.accept()
    accepted.close()  # the server closes first: its side of the connection is in TIME_WAIT
    time.sleep(0.1)
    client.close()
    previous.close()
    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        held = listen._hold("127.0.0.1", port)
    with held:
        assert f"port {port}: [Errno 98]" in caplog.text and "holding it with SO_REUSEADDR" in (
            caplog.text
        )
        with listen.bind(held.getsockname(), socket.AF_INET) as worker:
            worker.listen()  # the workers still bind next to it
