"""Git credentials against a real smart-HTTP server with basic auth (tests/support/githttp.py):
the token reaches git only as a header in its environment, never its argv, a URL on the wire,
the mirror's config or any message; a commit must be on the branch it was pushed to."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard import source
from shipyard.errors import SourceError
from shipyard.source import GitAuth, checkout, scrub, split_credentials
from tests.support.githttp import GitHttp, bare_copy, serving
from tests.support.projects import commit_all, edit_manifest, git

pytestmark = pytest.mark.unit

TOKEN = "ghp_Tok3nThatMustNeverShow"
HEADER = base64.b64encode(f"bot:{TOKEN}".encode()).decode()


@pytest.fixture
def server(sklearn_repo: Path, tmp_path: Path) -> Iterator[GitHttp]:
    bare_copy(sklearn_repo, tmp_path / "srv", "digits.git")
    with serving(tmp_path / "srv", "bot", TOKEN) as running:
        yield running


def with_token(url: str, token: str = TOKEN) -> str:
    return url.replace("http://", f"http://bot:{token}@")


def chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_token_in_the_url_reaches_git_only_as_a_header(
    server: GitHttp, sklearn_repo: Path, tmp_path: Path
) -> None:
    clean, auth = split_credentials(with_token(server.repo_url("digits.git")))
    assert clean == server.repo_url("digits.git") and auth == GitAuth("bot", TOKEN)
    assert TOKEN not in repr(auth)

    tree = checkout(clean, "main", None, tmp_path / "co", auth=auth, branch="main")
    again = checkout(clean, "main", None, tmp_path / "co", auth=auth)  # fetches the mirror

    assert tree.commit == again.commit == git(sklearn_repo, "rev-parse", "HEAD")
    assert tree.source == clean and tree.branch == "main"
    assert server.refused == 0 and server.requests
    assert not [r for r in server.requests if TOKEN in r or "bot" in r]
    assert files_holding(tmp_path / "co", TOKEN) == files_holding(tmp_path / "co", HEADER) == []


@pytest.mark.parametrize("case", ["wrong token", "no token", "missing ref"])
def test_git_errors_name_the_url_and_never_the_token(
    server: GitHttp, tmp_path: Path, case: str
) -> None:
    url = server.repo_url("digits.git")
    auth = None if case == "no token" else GitAuth("bot", TOKEN)
    if case == "wrong token":
        auth = GitAuth("bot", TOKEN + "-expired")
    with pytest.raises(SourceError) as e:
        checkout(url, "v9" if case == "missing ref" else "main", None, tmp_path / "co", auth=auth)
    message = " | ".join(map(str, chain(e.value)))  # with every exception it was raised from
    assert url in message
    assert "does not exist" in message if case == "missing ref" else "Cannot clone" in message
    assert TOKEN not in message and HEADER not in message
    assert files_holding(tmp_path / "co", TOKEN) == []


def test_a_source_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    for url in (
        f"https://bot:{TOKEN}@git.example.com/team/model.git",
        f"https://{TOKEN}@git.example.com/team/model.git",
    ):
        with pytest.raises(SourceError, match="carries credentials") as e:
            checkout(url, "main", None, tmp_path / "co")
        assert TOKEN not in str(e.value) and "https://git.example.com/team/model.git" in str(
            e.value
        )
    assert not (tmp_path / "co").exists()


def test_a_host_that_never_answers_times_out_with_a_redacted_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source, "GIT_TIMEOUT_S", 2)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        held: list[socket.socket] = []
        accepting = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
        accepting.start()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/digits.git"
        with pytest.raises(SourceError, match="did not finish within 2 s") as e:
            checkout(url, "main", None, tmp_path / "co", auth=GitAuth("bot", TOKEN))
        for conn in held:
            conn.close()
    message = " | ".join(map(str, chain(e.value)))
    assert TOKEN not in message and HEADER not in message


def test_scrub_removes_userinfo_authorization_values_and_the_token() -> None:
    auth = GitAuth("bot", TOKEN)
    text = f"https://bot:{TOKEN}@h/x Authorization: Basic {HEADER} and {TOKEN} alone"
    assert scrub(text, auth) == "https://***@h/x Authorization: Basic *** and *** alone"


def test_a_commit_not_on_the_pushed_branch_is_refused(sklearn_repo: Path, tmp_path: Path) -> None:
    main = git(sklearn_repo, "rev-parse", "HEAD")
    git(sklearn_repo, "checkout", "-q", "-b", "side")
    edit_manifest(sklearn_repo, "seed: 0", "seed: 5")
    side = commit_all(sklearn_repo, "Only on side")
    git(sklearn_repo, "checkout", "-q", "main")
    url = sklearn_repo.as_uri()

    with pytest.raises(SourceError) as e:
        checkout(url, side, None, tmp_path / "co", branch="main")
    assert f"Commit {side} is not on branch 'main'" in str(e.value)
    assert f"whose tip is {main}" in str(e.value)
    assert checkout(url, main, None, tmp_path / "co", branch="main").commit == main
    assert checkout(url, side, None, tmp_path / "co", branch="side").commit == side
    with pytest.raises(SourceError, match="Branch 'gone' does not exist"):
        checkout(url, main, None, tmp_path / "co", branch="gone")


@pytest.mark.parametrize(
    ("given", "clean", "auth"),
    [
        ("https://bot:tok@h:8443/x.git", "https://h:8443/x.git", GitAuth("bot", "tok")),
        ("https://tok@h/x.git", "https://h/x.git", GitAuth("x-access-token", "tok")),
        ("ssh://git@h/x.git", "ssh://git@h/x.git", None),  # a login name, not a secret
        ("ssh://git:pw@h/x.git", "ssh://h/x.git", GitAuth("git", "pw")),
        ("git@h:team/x.git", "git@h:team/x.git", None),
        ("/srv/git/x", "/srv/git/x", None),
    ],
)
def test_split_credentials(given: str, clean: str, auth: GitAuth | None) -> None:
    assert split_credentials(given) == (clean, auth)
