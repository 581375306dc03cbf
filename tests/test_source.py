from pathlib import Path

import pytest

from shipyard.errors import SourceError
from shipyard.source import checkout, tree_hash
from tests.support.projects import commit_all, edit_manifest, git, sklearn_project

pytestmark = pytest.mark.unit


def test_git_source_checks_out_the_exact_commit_of_a_ref(
    sklearn_repo: Path, tmp_path: Path
) -> None:

    first = git(sklearn_repo, "rev-parse", "HEAD")
    edit_manifest(sklearn_repo, "max_iter: 300", "max_iter: 200")
    with (sklearn_repo / "train.py").open("a") as train:
        train.write("# fewer iterations are enough\n")
    second = commit_all(sklearn_repo, "Fewer iterations")
    url = sklearn_repo.as_uri()

    head = checkout(url, "main", None, tmp_path / "co")
    old = checkout(url, first, None, tmp_path / "co")

    assert head.commit == second and old.commit == first
    assert "max_iter: 200" in (head.project_dir / "shipyard.yaml").read_text()
    assert "max_iter: 300" in (old.project_dir / "shipyard.yaml").read_text()
    assert head.tree_hash != old.tree_hash
    assert not head.dirty and head.commit_time is not None
    assert not (head.project_dir / ".git").exists()


def test_a_new_commit_on_the_branch_is_fetched(sklearn_repo: Path, tmp_path: Path) -> None:
    url = sklearn_repo.as_uri()
    before = checkout(url, "main", None, tmp_path / "co")
    edit_manifest(sklearn_repo, "seed: 0", "seed: 1")
    after_sha = commit_all(sklearn_repo, "Reseed")
    after = checkout(url, "main", None, tmp_path / "co")
    assert after.commit == after_sha != before.commit


def _checkout_main(url: str, root: str) -> str:
    return checkout(url, "main", None, Path(root)).commit or ""


def test_releases_starting_at_once_share_one_mirror(sklearn_repo: Path, tmp_path: Path) -> None:
    """Two workers that release one repository at once (one checkouts directory) used to race
    on its first clone: the second `git clone` found the first one's directory and failed."""
    from concurrent.futures import ProcessPoolExecutor

    url, root = sklearn_repo.as_uri(), str(tmp_path / "co")
    with ProcessPoolExecutor(6) as pool:
        commits = list(pool.map(_checkout_main, [url] * 12, [root] * 12))
    assert set(commits) == {git(sklearn_repo, "rev-parse", "HEAD")}
    mirrors = tmp_path / "co" / "mirrors"
    assert [p.name for p in mirrors.iterdir() if p.is_dir()] == [
        p.stem for p in mirrors.glob("*.lock")
    ]  # one mirror, no clone left aside


def test_a_failed_clone_leaves_no_directory_behind(tmp_path: Path) -> None:
    for _ in range(2):  # the second attempt fails the same way, not on a half-made mirror
        with pytest.raises(SourceError, match="Cannot clone"):
            checkout((tmp_path / "nowhere.git").as_uri(), "main", None, tmp_path / "co")
    assert not [p for p in (tmp_path / "co" / "mirrors").iterdir() if p.is_dir()]


def test_unknown_ref_names_the_ref_and_the_known_ones(sklearn_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as e:
        checkout(sklearn_repo.as_uri(), "no-such-branch", None, tmp_path / "co")
    assert "'no-such-branch' does not exist" in str(e.value)
    assert "main" in str(e.value)


def test_unreachable_repository_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="Cannot clone"):
        checkout((tmp_path / "nowhere.git").as_uri(), "main", None, tmp_path / "co")


def test_working_tree_records_commit_and_dirtiness(sklearn_repo: Path, tmp_path: Path) -> None:
    clean = checkout(str(sklearn_repo), None, None, tmp_path / "co")
    assert clean.commit == git(sklearn_repo, "rev-parse", "HEAD") and not clean.dirty
    (sklearn_repo / "notes.txt").write_text("uncommitted\n")
    dirty = checkout(str(sklearn_repo), None, None, tmp_path / "co")
    assert dirty.dirty and dirty.tree_hash != clean.tree_hash


def test_subdir_must_stay_inside_the_source(sklearn_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="leaves the source tree"):
        checkout(sklearn_repo.as_uri(), "main", "../..", tmp_path / "co")
    with pytest.raises(SourceError, match="does not exist"):
        checkout(sklearn_repo.as_uri(), "main", "models/none", tmp_path / "co")


def test_a_path_that_is_not_a_directory_is_explained(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither a directory nor a git URL"):
        checkout(str(tmp_path / "missing"), None, None, tmp_path / "co")


def test_tree_hash_ignores_caches_but_not_content(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("x = 1\n")
    base = tree_hash(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    assert tree_hash(tmp_path) == base
    (tmp_path / "train.py").write_text("x = 2\n")
    assert tree_hash(tmp_path) != base


def test_credentials_in_a_url_are_never_recorded() -> None:
    from shipyard.source import redact

    assert redact("https://bot:s3cret@git.example.com:8443/team/model.git") == (
        "https://git.example.com:8443/team/model.git"
    )
    assert redact("file:///srv/repo") == "file:///srv/repo"
    assert redact("examples/digits-sklearn") == "examples/digits-sklearn"


def test_the_tree_hash_ignores_the_manifest_whose_canonical_form_is_hashed_instead(
    tmp_path: Path,
) -> None:
    project = sklearn_project(tmp_path)
    before = tree_hash(project)
    with (project / "shipyard.yaml").open("a") as manifest:
        manifest.write("deploy: {strategy: canary}  # rollout policy only\n")
    assert tree_hash(project) == before
    (project / "data.py").write_text((project / "data.py").read_text() + "\n# changed\n")
    assert tree_hash(project) != before


def test_without_tarfiles_data_filter_a_checkout_still_refuses_what_leaves_it(
    sklearn_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian bookworm's Python 3.11.2 (the docker pool's worker image) has no `filter=` for
    tarfile: the checkout extracts git's archive with the same refusals itself."""
    import io
    import tarfile

    from shipyard import source

    monkeypatch.delattr(tarfile, "data_filter")
    (sklearn_repo / "link").symlink_to("train.py")
    commit_all(sklearn_repo, "A link inside the project")
    tree = checkout(sklearn_repo.as_uri(), "main", None, tmp_path / "co")
    assert (tree.project_dir / "link").read_text() == (sklearn_repo / "train.py").read_text()

    for name, link in (("../evil", None), ("/abs", None), ("ok", "../../etc/passwd")):
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            member = tarfile.TarInfo(name)
            if link is not None:
                member.type, member.linkname = tarfile.SYMTYPE, link
            tar.addfile(member, io.BytesIO(b""))
        archive.seek(0)
        dest = tmp_path / f"x{len(name)}"
        dest.mkdir()
        with tarfile.open(fileobj=archive) as tar, pytest.raises(SourceError, match="leaves"):
            source._extract(tar, dest, "repo@abc")
        assert list(dest.iterdir()) == []
