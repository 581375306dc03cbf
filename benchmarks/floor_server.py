"""The floor: the smallest honest server for a Shipyard model, to measure Shipyard's against.

A bare ASGI callable under uvicorn (uvloop, httptools), orjson and one ONNX Runtime session with
the options Shipyard's server uses (`shipyard_serving/model.py`). It answers POST /invocations
with the response Shipyard's server gives (`{"predictions": {"label", "probabilities",
"label_name"}}`) and GET /v2/health/ready; no routing framework, auth, validation, limits or
metrics. Whatever Shipyard's server costs beyond this is what its features cost.

Run: `python benchmarks/floor_server.py MODEL_DIR [--port P] [--workers N] [--reuse-port]`
(benchmarks/serving_floor.py starts it next to Shipyard's server). With `--reuse-port`, each worker
accepts on its own socket through Shipyard's listener (`shipyard_serving/listen.py`, nothing per
request), so that both servers spread connections over their workers alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

MODEL_DIR = "FLOOR_MODEL_DIR"  # workers are spawned: they find the model in their environment
HEADERS = [(b"content-type", b"application/json")]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Floor:
    def __init__(self) -> None:
        self.session: ort.InferenceSession | None = None
        self.feed = ""
        self.labels: list[str] = []

    def load(self, model_dir: Path) -> None:
        options = ort.SessionOptions()  # as shipyard_serving.model.ServedModel, one thread
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.feed = self.session.get_inputs()[0].name
        meta = model_dir / "shipyard.json"
        if meta.is_file():
            self.labels = json.loads(meta.read_text()).get("labels") or []

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.load(Path(os.environ[MODEL_DIR]))
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await self._send(send, b'{"ready":true}')
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        x = np.asarray(orjson.loads(body)["inputs"], dtype=np.float32)
        assert self.session is not None
        labels, probabilities = self.session.run(None, {self.feed: x})[:2]
        predictions: dict[str, Any] = {"label": labels, "probabilities": probabilities}
        if self.labels:
            predictions["label_name"] = [self.labels[i] for i in labels.tolist()]
        out = {"predictions": predictions}
        await self._send(send, orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY))

    @staticmethod
    async def _send(send: Send, body: bytes) -> None:
        headers = [*HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app() -> Floor:
    return Floor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--reuse-port", action="store_true", help="a socket per worker")
    args = parser.parse_args()
    os.environ[MODEL_DIR] = str(args.model_dir.resolve())
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # workers import floor_server
    options: dict[str, Any] = dict(
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )
    from shipyard_serving import listen  # uvicorn.run, or with --reuse-port a socket per worker

    listen.run("floor_server:create_app", reuse_port=args.reuse_port, **options)


if __name__ == "__main__":
    main()
