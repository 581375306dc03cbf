"""A real git smart-HTTP server on 127.0.0.1 with HTTP basic auth: python's wsgiref in front of
git's own `git http-backend` CGI (https://git-scm.com/docs/git-http-backend). It records every
request's path and query, so a test can check that no token ever travelled in a URL."""

from __future__ import annotations

import base64
import hmac
import os
import socketserver
import subprocess
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tests.support.projects import git

BACKEND = Path(git(Path("/"), "--exec-path")) / "git-http-backend"


class _Threading(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class GitHttp:
    """Serves the bare repositories under `root` as `http://127.0.0.1:<port>/<name>.git`."""

    root: Path
    user: str
    token: str
    requests: list[str] = field(default_factory=list)
    """`METHOD path?query` of every request, in order."""
    refused: int = 0
    url: str = ""

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def app(self, environ: dict[str, Any], start: Any) -> Iterable[bytes]:
        self.requests.append(
            f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}?"
            f"{environ.get('QUERY_STRING', '')}"
        )
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        if not hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", ""), expected):
            self.refused += 1
            start("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"unauthorized\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": self.user,
            "REMOTE_ADDR": "127.0.0.1",
            **{
                key: environ.get(key, "")
                for key in (
                    "REQUEST_METHOD",
                    "PATH_INFO",
                    "QUERY_STRING",
                    "CONTENT_TYPE",
                    "HTTP_CONTENT_ENCODING",
                    "HTTP_GIT_PROTOCOL",
                )
            },
            "CONTENT_LENGTH": str(len(body)),
        }
        done = subprocess.run([str(BACKEND)], input=body, env=cgi, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode(errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name.strip(), value.strip()))
        start(status, headers)
        return [payload]


def bare_copy(repo: Path, root: Path, name: str) -> Path:
    """A bare clone of `repo` named `name` under `root`, as a git host keeps it."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    git(root, "clone", "--bare", "--quiet", str(repo), str(target))
    return target


@contextmanager
def serving(root: Path, user: str, token: str) -> Iterator[GitHttp]:
    """A `GitHttp` listening on 127.0.0.1 (a free port) while the block runs."""
    server = GitHttp(root, user, token)
    httpd = make_server("127.0.0.1", 0, server.app, server_class=_Threading, handler_class=_Quiet)
    server.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
