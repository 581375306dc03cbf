"""A registry that fails on demand: a TCP proxy on 127.0.0.1 in front of the stack's registry.

Docker treats every 127.0.0.0/8 registry as insecure, so `SHIPYARD_REGISTRY=127.0.0.1:<port>`
pushes through the proxy unchanged; the proxy records each connection and drops the first N
(accepted, then reset), which the engine reports as a failed push, as it would a registry
that restarts.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shipyard import engine, registry
from shipyard.image.release import ReleaseImage
from shipyard.settings import Settings

BURST_GAP_S = 0.5
"""Connections of one push attempt come within milliseconds; a retry waits ≥ 1 s (backoff)."""


def bursts(times: list[float]) -> list[float]:
    """When each burst of connections began, in seconds after the first: one per attempt."""
    starts = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] >= BURST_GAP_S]
    return [round(t - times[0], 2) for t in starts]


class RegistryProxy:
    """Forwards 127.0.0.1:`port` to `upstream` (host, port), dropping the first `drop`
    connections. `connections` lists (monotonic time, dropped) per accepted connection."""

    def __init__(self, upstream: tuple[str, int], drop: int = 0) -> None:
        self.upstream, self.drop = upstream, drop
        self.connections: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                dropped = sum(1 for _, d in self.connections if d) < self.drop
                self.connections.append((time.monotonic(), dropped))
                self._sockets.append(conn)
            if dropped:  # reset at once, before a byte is read
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.append(upstream)
        selector = selectors.DefaultSelector()
        selector.register(conn, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, conn)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            conn.close()
            upstream.close()

    def attempts(self) -> list[float]:
        """When each push attempt began, up to the first connection let through (a push that
        gets through may pause longer between its own connections)."""
        times = []
        for at, dropped in self.connections:
            times.append(at)
            if not dropped:
                break
        return bursts(times)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for s in self._sockets:
                s.close()


@pytest.fixture
def registry_proxy(docker_stack: dict[str, str]) -> Iterator[Callable[[int], RegistryProxy]]:
    """A factory: `registry_proxy(drop)` in front of the stack's registry, closed after the
    test."""
    made: list[RegistryProxy] = []
    host, _, port = engine.registry_login(Settings()).address.rpartition(":")

    def make(drop: int = 0) -> RegistryProxy:
        proxy = RegistryProxy((host, int(port)), drop)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


PUSHED = "push-test"


@pytest.fixture
def base_as_release(
    image_settings: Settings, tmp_path: Path
) -> Iterator[Callable[[str], tuple[ReleaseImage, str, str]]]:
    """A factory: the stack's base image tagged for a registry address as the release image of
    a version of `push-test` registered for the test (`(image, version, run_id)`); what a push
    does needs no trained model. The tags are removed after the test."""
    client = engine.engine(image_settings)
    base = client.images.get(engine.base_image(image_settings))
    tagged: list[str] = []

    def make(address: str) -> tuple[ReleaseImage, str, str]:
        reference = f"{address}/shipyard/{PUSHED}:{tmp_path.name}"
        base.tag(reference)
        tagged.append(reference)
        for name in ("sbom.cdx.json", "golden.json", "shipyard.json"):
            (tmp_path / name).write_text("{}")
        mlflow = registry.client(image_settings)
        experiment = registry.experiment_id(mlflow, image_settings, PUSHED)  # under state_dir
        run = mlflow.create_run(experiment).info.run_id
        if len(tagged) == 1:
            mlflow.create_registered_model(PUSHED)
        version = mlflow.create_model_version(PUSHED, f"runs:/{run}/model", run_id=run)
        image = ReleaseImage(
            reference,
            str(base.id),
            int(base.attrs["Size"]),
            tmp_path / "sbom.cdx.json",
            tmp_path / "golden.json",
            tmp_path / "shipyard.json",
        )
        return image, str(version.version), run

    yield make
    for reference in tagged:
        client.images.remove(reference)
