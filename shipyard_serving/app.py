"""The ASGI app: routing, limits, auth, metrics and errors around the served model.

A plain `(scope, receive, send)` callable; the model and the batcher open in `lifespan`.
Client errors are JSON with `error`, `field` and `expected`; a 500 means a bug, never bad input.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from shipyard_serving import __version__, protocol
from shipyard_serving.auth import KeyCheck
from shipyard_serving.batching import MicroBatcher
from shipyard_serving.config import ServeSettings
from shipyard_serving.eager import Pending, eager
from shipyard_serving.metrics import Metrics
from shipyard_serving.model import ServedModel
from shipyard_serving.protocol import RequestError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Reply = tuple[int, bytes, bytes]  # status, body, content type

JSON = b"application/json"
log = logging.getLogger("shipyard_serving")


def _json(status: int, body: Any) -> Reply:
    return status, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), JSON


class BodyTooLarge(RequestError):
    """A 413 for the body; `drained` when the rest of it was read, so the connection may stay."""

    def __init__(self, message: str, limit: int, drained: bool) -> None:
        super().__init__(413, message, "body", f"at most {limit} bytes")
        self.drained = drained


class InferenceApp:
    def __init__(self, settings: ServeSettings, model: ServedModel | None = None) -> None:
        self.settings = settings
        self.model = model
        self.keys = KeyCheck([])  # read in `load`: the keys file is a mounted secret
        self.metrics: Metrics | None = None
        self.batcher: MicroBatcher | None = None
        # path → (route, method, bound handler), resolved once rather than on every request
        self._static: dict[str, tuple[str, str, InferenceApp.Handler]] = {
            path: (route, STATIC_HANDLERS[route][0], getattr(self, STATIC_HANDLERS[route][1]))
            for path, route in STATIC_ROUTES.items()
        }

    # -- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        self.keys = KeyCheck(self.settings.keys())
        if self.model is None:
            self.model = ServedModel(self.settings.model_dir, self.settings.threads)
        self.metrics = Metrics(self.model.info)
        # What startup allocated (ONNX Runtime, numpy, settings) never becomes garbage: keep it
        # out of the collector's scans. https://docs.python.org/3/library/gc.html#gc.freeze
        gc.freeze()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.load()
                    if self.settings.batching:
                        self._start_batcher()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.batcher is not None:
                    await self.batcher.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _start_batcher(self) -> None:
        assert self.model is not None and self.metrics is not None
        inflight = self.metrics.inflight
        self.batcher = MicroBatcher(
            self.model.predict,
            self.settings.max_batch_size,
            self.settings.max_batch_delay_ms / 1000,
            lambda: int(inflight.value),
            self.metrics.batch_rows.observe,
        )
        self.batcher.start()

    # -- requests --------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        start = time.perf_counter()
        metrics = self.metrics
        assert metrics is not None, "the app serves only after lifespan startup"
        inflight = metrics.inflight
        inflight.add(1)
        route = "other"
        close = False
        try:
            static = self._static.get(scope["path"])
            if static is not None and static[1] == scope["method"]:
                route, _, handler = static
                params = NO_PARAMS
            else:
                route, handler, params = self._route(scope["method"], scope["path"])
            headers = dict(scope["headers"])
            if not (self.keys.allows(headers) or self._is_open(route)):
                raise RequestError(
                    401,
                    "missing or invalid API key: send `Authorization: Bearer "
                    "<key>` or `X-API-Key: <key>`",
                    "authorization",
                    "a valid API key",
                )
            status, body, content_type = await handler(scope, receive, headers, params)
        except RequestError as e:
            status, body, content_type = _json(e.status, e.body())
            # Unread body left on the connection: uvicorn would read and drop it for as long
            # as the client sends; close instead.
            close = isinstance(e, BodyTooLarge) and not e.drained
        except TimeoutError:
            status, body, content_type = _json(
                504, {"error": f"request took longer than {self.settings.request_timeout_s} s"}
            )
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status, body, content_type = _json(500, {"error": "internal server error"})
        finally:
            inflight.add(-1)
        response_headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
        ]
        if status == 401:
            response_headers.append((b"www-authenticate", b"Bearer"))
        if close:
            response_headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        metrics.observe(route, status, time.perf_counter() - start)

    def _is_open(self, route: str) -> bool:
        if not self.keys.enabled:
            return True
        return self.settings.open_health and route in OPEN_ROUTES

    Handler = Callable[[Scope, Receive, dict[bytes, bytes], dict[str, str]], Awaitable[Reply]]

    def _route(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]]:
        static = self._static.get(path)
        if static is not None:
            route, verb, handler = static
            if method != verb:
                self._check_method(route, method, verb)
            return route, handler, NO_PARAMS
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            params = {"name": parts[2]}
            rest = parts[3:]
            template = "/v2/models/{name}"
            if len(rest) >= 2 and rest[0] == "versions":
                params["version"] = rest[1]
                rest = rest[2:]
                template += "/versions/{version}"
            action = rest[0] if len(rest) == 1 else "" if not rest else None
            if action in MODEL_ACTIONS:
                verb, name = MODEL_ACTIONS[action]
                route = template + (f"/{action}" if action else "")
                return self._check_method(route, method, verb), getattr(self, name), params
        raise RequestError(
            404,
            f"no route {path}; see GET /v2/models/{{name}}, POST "
            "/v2/models/{name}/infer, POST /invocations",
            "path",
            "a known route",
        )

    @staticmethod
    def _check_method(route: str, method: str, expected: str) -> str:
        if method != expected:
            raise RequestError(405, f"{method} is not allowed on {route}", "method", expected)
        return route

    def _model_for(self, params: dict[str, str]) -> ServedModel:
        model = self.model
        assert model is not None
        if params.get("name") != model.info.name:
            raise RequestError(
                404,
                f"unknown model {params.get('name')!r}; this server serves {model.info.name!r}",
                "model name",
                repr(model.info.name),
            )
        version = params.get("version")
        if version is not None and version != model.info.version:
            raise RequestError(
                404,
                f"unknown version {version!r} of {model.info.name!r}; this "
                f"server serves version {model.info.version!r}",
                "model version",
                repr(model.info.version),
            )
        return model

    async def _read_json(self, receive: Receive, headers: dict[bytes, bytes]) -> tuple[Any, bytes]:
        """The body as a JSON document, and as sent."""
        content_type = headers.get(b"content-type", JSON)
        if content_type != JSON:
            content_type = content_type.split(b";")[0].strip().lower()
        if content_type != JSON:
            raise RequestError(
                415,
                f"content type {content_type.decode(errors='replace')!r} is not supported",
                "content-type",
                "application/json",
            )
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            size = int(declared)
            drained = size <= self.settings.max_drain_bytes and await self._discard_body(
                receive, self.settings.max_drain_bytes
            )
            raise BodyTooLarge(f"body of {size} bytes exceeds the limit of {limit}", limit, drained)
        message = eager(receive())
        if (
            isinstance(message, Pending)
            or message.get("more_body", False)
            or message["type"] != "http.request"
            or len(body := message.get("body", b"")) > limit
        ):
            body = await self._read_body(receive, limit, message)
        # else the usual case: the whole body came with the request's head, and nothing waited
        try:
            return orjson.loads(body), body
        except orjson.JSONDecodeError as e:
            raise RequestError(400, f"malformed JSON: {e}", "body", "a JSON document") from None

    async def _read_body(
        self, receive: Receive, limit: int, message: dict[str, Any] | Pending[dict[str, Any]]
    ) -> bytes:
        """The body from its first `message` on, within `limit` bytes and request_timeout_s of
        the first wait for it (a 413, 408 or 400 otherwise)."""
        chunks: list[bytes] = []
        size, more = 0, True
        deadline = None
        try:
            while True:
                if isinstance(message, Pending):  # not here yet: wait, within the deadline
                    if deadline is None:
                        loop = asyncio.get_running_loop()
                        deadline = loop.time() + self.settings.request_timeout_s
                    async with asyncio.timeout_at(deadline):
                        message = await message
                if message["type"] == "http.disconnect":
                    raise RequestError(400, "client disconnected before sending the body")
                chunk = message.get("body", b"")
                size += len(chunk)
                more = message.get("more_body", False)
                if size <= limit:
                    chunks.append(chunk)
                if not more or size > limit:
                    break
                message = eager(receive())
        except TimeoutError:
            raise RequestError(
                408,
                f"the body did not arrive within {self.settings.request_timeout_s} s",
                "body",
                "the whole body within the request timeout",
            ) from None
        if size > limit:
            chunks.clear()
            drained = not more or await self._discard_body(
                receive, self.settings.max_drain_bytes - size
            )
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes", limit, drained)
        return b"".join(chunks)

    async def _discard_body(self, receive: Receive, budget: int) -> bool:
        """Read and drop the rest of a refused body, at most `budget` more bytes and
        `drain_timeout_s` seconds (defaults 8 MiB in all and 5 s); True when it ended within both.

        uvicorn closes the connection right after the answer when the client asked
        `Connection: close` (urllib always does); with body bytes still unread the kernel then
        sends a TCP reset, and a client that sends the whole body before reading gets the reset
        instead of the 413. So, like nginx's lingering close, the server reads on for a bounded
        size and time and keeps nothing: memory stays at one received chunk. Past either cap the
        413 goes out with `Connection: close` (else uvicorn would drop the rest of the body for
        as long as a keep-alive client sends it).
        https://nginx.org/en/docs/http/ngx_http_core_module.html#lingering_close
        """
        try:
            async with asyncio.timeout(self.settings.drain_timeout_s):
                while budget >= 0:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return False
                    budget -= len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return budget >= 0
        except TimeoutError:
            pass
        return False

    async def _predict_batched(self, x: Any) -> tuple[Any, Any]:
        assert self.batcher is not None
        async with asyncio.timeout(self.settings.request_timeout_s):
            return await self.batcher.predict(x)

    def _predict(self, model: ServedModel, x: Any) -> tuple[Any, Any]:
        assert self.metrics is not None
        self.metrics.batch_rows.observe(len(x))
        return model.predict(x)  # in the event loop: a call takes microseconds

    # -- handlers --------------------------------------------------------------------------

    async def live(self, *_: Any) -> Reply:
        return _json(200, {"live": True})

    async def ready(self, *_: Any) -> Reply:
        return _json(200 if self.model is not None else 503, {"ready": self.model is not None})

    async def ping(self, *_: Any) -> Reply:
        return 200, b"\n", b"text/plain"

    async def server_metadata(self, *_: Any) -> Reply:
        return _json(200, {"name": "shipyard", "version": __version__, "extensions": []})

    async def prometheus(self, *_: Any) -> Reply:
        from prometheus_client import CONTENT_TYPE_LATEST  # at the first scrape, not at startup

        assert self.metrics is not None
        return 200, self.metrics.render(), CONTENT_TYPE_LATEST.encode()

    async def model_metadata(
        self, _s: Scope, _r: Receive, _h: Any, params: dict[str, str]
    ) -> Reply:
        model = self._model_for(params)
        return _json(200, protocol.model_metadata(model.info, model.n_classes))

    async def model_ready(self, _s: Scope, _r: Receive, _h: Any, params: dict[str, str]) -> Reply:
        self._model_for(params)
        return _json(200, {"name": params["name"], "ready": True})

    async def infer(
        self, _s: Scope, receive: Receive, headers: dict[bytes, bytes], params: dict[str, str]
    ) -> Reply:
        model = self._model_for(params)
        body, _ = await self._read_json(receive, headers)
        x, wanted, request_id = protocol.parse_v2(body, model.info, self.settings.max_batch_rows)
        labels, probabilities = (
            self._predict(model, x) if self.batcher is None else await self._predict_batched(x)
        )
        return _json(
            200,
            protocol.v2_response(
                model.info, labels, probabilities, model.label_names(labels), wanted, request_id
            ),
        )

    async def invocations(
        self, _s: Scope, receive: Receive, headers: dict[bytes, bytes], _p: dict[str, str]
    ) -> Reply:
        model = self.model
        assert model is not None
        body, text = await self._read_json(receive, headers)
        x = protocol.parse_mlflow(body, model.info, self.settings.max_batch_rows, text)
        labels, probabilities = (
            self._predict(model, x) if self.batcher is None else await self._predict_batched(x)
        )
        return _json(
            200, protocol.mlflow_response(labels, probabilities, model.label_names(labels))
        )


STATIC_ROUTES = {
    "/v2/health/live": "/v2/health/live",
    "/v2/health/ready": "/v2/health/ready",
    "/v2": "/v2",
    "/ping": "/ping",
    "/health": "/ping",
    "/metrics": "/metrics",
    "/invocations": "/invocations",
}
STATIC_HANDLERS = {
    "/v2/health/live": ("GET", "live"),
    "/v2/health/ready": ("GET", "ready"),
    "/v2": ("GET", "server_metadata"),
    "/ping": ("GET", "ping"),
    "/metrics": ("GET", "prometheus"),
    "/invocations": ("POST", "invocations"),
}
MODEL_ACTIONS = {
    "": ("GET", "model_metadata"),
    "ready": ("GET", "model_ready"),
    "infer": ("POST", "infer"),
}
NO_PARAMS: dict[str, str] = {}  # shared by the routes without parameters: handlers only read it
OPEN_ROUTES = {"/v2/health/live", "/v2/health/ready", "/ping", "/metrics"}


def create_app(
    settings: ServeSettings | None = None, model: ServedModel | None = None
) -> InferenceApp:
    return InferenceApp(settings or ServeSettings(), model)
