"""The allow-list as configured (`[[allowed_sources]]` in shipyard.toml, SHIPYARD_ALLOWED_SOURCES
as JSON) and the rules `shipyard/trust.py` applies with it: pure functions, no service."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from shipyard import audit, trust
from shipyard.errors import SourceError
from shipyard.settings import AllowedSource, Settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in os.environ:
        if name.upper().startswith("SHIPYARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_allowed_sources_are_read_from_shipyard_toml_tables(workdir: Path) -> None:
    (workdir / "shipyard.toml").write_text(
        f'allowed_file_root = "{workdir}"\n'
        "[[allowed_sources]]\n"
        'repository = "team/digits"\n'
        'url = "https://git.example.com/team/digits.git"\n'
        'models = ["digits-sklearn"]\n'
        'branches = ["main", "release/*"]\n'
        'credentials = "DIGITS_TOKEN"\n'
        "[[allowed_sources]]\n"
        'repository = "team/local"\n'
        f'url = "{(workdir / "local.git").as_uri()}"\n'
        'models = ["digits-cnn"]\n'
        "network = true\n"
    )
    first, second = Settings().allowed_sources
    assert first.branches == ["main", "release/*"] and first.paths == [] and not first.network
    assert first.credentials == "DIGITS_TOKEN"
    assert second.models == ["digits-cnn"] and second.network and second.branches == ["main"]


def test_allowed_sources_are_read_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = {"repository": "g/sub/model", "url": "ssh://git@host/g/sub/model", "models": ["m"]}
    monkeypatch.setenv("SHIPYARD_ALLOWED_SOURCES", json.dumps([entry]))
    [read] = Settings().allowed_sources
    assert read.repository == "g/sub/model" and read.url == "ssh://git@host/g/sub/model"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://git.example.com/x.git", "http:// only to 127.0.0.1"),
        ("git://git.example.com/x.git", "got git scheme"),
        ("git@git.example.com:team/x.git", "got no scheme"),
        ("file:///srv/elsewhere/x.git", "outside allowed_file_root"),
    ],
)
def test_an_entry_with_a_bad_url_names_the_field_and_the_fix(url: str, problem: str) -> None:
    with pytest.raises(ValidationError) as e:
        Settings(
            allowed_sources=[{"repository": "team/x", "url": url, "models": ["m"]}],
            allowed_file_root="/srv/git",
        )
    assert problem in str(e.value) and "allowed_sources" in str(e.value)


@pytest.mark.parametrize(
    "url", ["https://bot:t0ken@git.example.com/x.git", "https://t0ken@git.example.com/x.git"]
)
def test_an_entry_whose_url_carries_a_token_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(SourceError) as e:
        Settings(allowed_sources=[{"repository": "team/x", "url": url, "models": ["m"]}])
    assert "'team/x': url 'https://git.example.com/x.git' carries a user or token" in str(e.value)
    assert "name it in the entry's `credentials`" in str(e.value)
    assert "t0ken" not in str(e.value)


def test_urls_are_compared_without_user_case_port_slash_or_dot_git() -> None:
    same = {
        trust.comparable(u)
        for u in (
            "https://git.example.com/team/x.git",
            "https://GIT.example.com:443/team/x/",
            "https://bot:t@git.example.com/team/x",
        )
    }
    assert same == {"https://git.example.com/team/x"}
    assert trust.comparable("https://git.example.com/team/x-other") not in same


def settings_with(root: Path, *urls: str, **rules: object) -> Settings:
    return Settings(
        allowed_sources=[
            AllowedSource(repository="team/x", url=u, models=["m"], **rules)  # type: ignore[arg-type]
            for u in urls
        ],
        allowed_file_root=root,
    )


def test_a_local_path_must_be_an_entry_and_lie_under_the_root_even_through_a_symlink(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "repo").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").mkdir()
    allowed = settings_with(root, (root / "repo").as_uri(), (root / "escape").as_uri())
    (root / "escape").rmdir()  # replaced by a link out once configured
    (root / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(ValidationError, match="outside allowed_file_root"):
        settings_with(root, (root / "escape").as_uri())  # refused when configured like this
    assert trust.grant(str(root / "repo"), allowed).entry is not None
    assert trust.grant((root / "repo").as_uri() + "/", allowed).entry is not None
    for refused in (str(root / "escape"), str(root / "repo" / ".." / "escape")):
        with pytest.raises(SourceError, match="outside allowed_file_root"):
            trust.grant(refused, allowed)
    with pytest.raises(SourceError, match="is not the url of any allowed_sources entry"):
        trust.grant(str(root), allowed)


def test_local_mode_allows_everything_and_grants_the_network() -> None:
    granted = trust.grant("https://anywhere.example/x.git", Settings())
    assert granted.entry is None and granted.network
    granted.check_model("any-model")


def test_the_entrys_models_and_network_are_what_it_grants(tmp_path: Path) -> None:
    granted = trust.grant(
        "https://git.example.com/x.git", settings_with(tmp_path, "https://git.example.com/x")
    )
    assert not granted.network
    granted.check_model("m")
    with pytest.raises(SourceError, match=r"Model 'other' is not among the models team/x may"):
        granted.check_model("other")


@pytest.mark.parametrize(
    ("branch", "changed", "truncated", "reason"),
    [
        ("release/2", ("models/a.py",), False, None),
        ("main", ("models/a.py",), False, "refs/heads/main is not a watched branch (release/*)"),
        ("release/2", ("docs/a.md",), False, "no changed path matches ['models/*']"),
        ("release/2", ("docs/a.md",), True, None),  # a truncated list cannot rule it out
    ],
)
def test_a_push_is_ignored_off_the_entrys_branches_and_paths(
    branch: str, changed: tuple[str, ...], truncated: bool, reason: str | None
) -> None:
    entry = AllowedSource(
        repository="t/x",
        url="https://h/t/x",
        models=["m"],
        branches=["release/*"],
        paths=["models/*"],
    )
    assert trust.push_ignored(entry, branch, changed, truncated, ["*"]) == reason


def test_an_entrys_credentials_name_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = AllowedSource(repository="t/x", url="https://h/t/x", models=["m"], credentials="TOK")
    monkeypatch.setenv("TOK", "bot:secret")
    assert trust.token(entry) == "bot:secret"
    assert trust.token(None) is None


def test_the_audit_trail_scrubs_authorization_headers_and_userinfo() -> None:
    text = "git failed: Authorization: Basic Ym90OnNlY3JldA== at https://bot:secret@h/x"
    assert audit.scrub(text) == "git failed: Authorization: Basic *** at https://***@h/x"


def test_a_push_names_its_repository_as_the_host_does_in_any_case(tmp_path: Path) -> None:
    allowed = settings_with(tmp_path, "https://git.example.com/team/x")
    assert trust.entry_for_repository("Team/X", allowed) is allowed.allowed_sources[0]
    assert trust.entry_for_repository("team/x-fork", allowed) is None
