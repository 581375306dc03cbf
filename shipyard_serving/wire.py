"""uvicorn's httptools protocol, with each response's head sent in one write with its body.

uvicorn writes a response's status line and headers when the app sends `http.response.start`,
then the body when it sends `http.response.body`: two system calls and, as uvloop sets
TCP_NODELAY, two TCP segments for every answer, each one handled by the kernel on both ends and
waking the client. Here the head waits for the response's first body write and both leave in
one `writelines` (one writev, one segment for a small answer). A head with no body write after
it (HEAD, or a response cut short) goes out when the response completes or the connection
closes. Interim answers (`100 Continue`) and whatever uvicorn writes whole (its own 400 and 500
answers) go out as they come. Measured in BENCHMARKS.md (`make bench-floor`): about 5 µs of
server CPU per request, and a client that reads each answer in one go.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _is_final_head(data: bytes) -> bool:
    """A status line and headers as uvicorn writes them for a final (not 1xx) answer."""
    return data[:9] == b"HTTP/1.1 " and data[9:10] != b"1" and data[-4:] == b"\r\n\r\n"


class HeadWithBody:
    """The connection's transport, holding a response's head until its body is written."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))
        elif _is_final_head(data):
            self._head = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now (nothing if the connection is already closing)."""
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    # What uvicorn calls on every request, forwarded without __getattr__'s lookup.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """`uvicorn.run(http=OneWriteProtocol)`: httptools, one write per answer."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadWithBody(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
