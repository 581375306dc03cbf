"""The release flow's trust boundary on the real Prefect server: allowed sources and models
checked before any project code runs, git tokens nowhere (errors, logs, the run's parameters
and name, the mirror, the CLI's output), and a pushed commit released only while it is its
branch's tip."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.concurrency.sync import concurrency
from prefect.logging.handlers import APILogWorker

from shipyard import audit, registry
from shipyard.errors import SourceError
from shipyard.flows.release import release
from shipyard.flows.rollout import build_lock
from shipyard.flows.stages import progress
from shipyard.settings import AllowedSource, Settings
from shipyard.source import CREDENTIALS_ENV
from shipyard.tasks.source import checkout as source_stage
from tests.flows.test_release import task_states
from tests.support.githttp import GitHttp, bare_copy, serving
from tests.support.projects import commit_all, edit_manifest, git
from tests.test_source_credentials import chain

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]

MODEL = "digits-sklearn"
TOKEN = "glpat-Tok3nThatMustNeverShow"
HEADER = base64.b64encode(f"bot:{TOKEN}".encode()).decode()
SHIPYARD = str(Path(sys.executable).parent / "shipyard")


def allowing(settings: Settings, root: Path, *entries: AllowedSource) -> Settings:
    return settings.model_copy(update={"allowed_sources": list(entries), "allowed_file_root": root})


def entry(url: str, **rules: Any) -> AllowedSource:
    return AllowedSource(repository="team/digits", url=url, models=[MODEL], **rules)


# ---- allowed sources ---------------------------------------------------------------------


def test_a_source_not_on_the_list_fails_in_the_source_stage_before_any_code_runs(
    sklearn_repo: Path, tmp_path: Path, settings: Settings
) -> None:
    ran = tmp_path / "data-ran"
    (sklearn_repo / "data.py").write_text(
        f"open({str(ran)!r}, 'w').close()\n" + (sklearn_repo / "data.py").read_text()
    )
    commit_all(sklearn_repo, "Data that leaves a mark")
    other = tmp_path / "other.git"
    strict = allowing(settings, tmp_path, entry(other.as_uri()))
    with pytest.raises(SourceError, match="is not the url of any allowed_sources entry") as e:
        release(source=sklearn_repo.as_uri(), ref="main", until="data", settings=strict)
    assert other.as_uri() in str(e.value) and "[[allowed_sources]]" in str(e.value)
    assert not ran.exists()
    assert audit.read(strict) == []  # refused before the release began


@pytest.mark.parametrize(
    "case", ["model not listed", "outside allowed_file_root", "listed", "listed, network"]
)
def test_the_source_stage_applies_the_entrys_rules(
    sklearn_repo: Path, tmp_path: Path, settings: Settings, case: str
) -> None:
    url = sklearn_repo.as_uri()
    listed = AllowedSource(
        repository="team/digits",
        url=url,
        models=["digits-cnn"] if case == "model not listed" else [MODEL],
        network=case.endswith("network"),
    )
    root = tmp_path / "elsewhere" if case == "outside allowed_file_root" else tmp_path
    strict = allowing(settings, root, listed)
    if case == "model not listed":
        with pytest.raises(SourceError, match="Model 'digits-sklearn' is not among the models"):
            source_stage.fn(url, "main", None, strict)  # the plain stage function
    elif case == "outside allowed_file_root":
        with pytest.raises(SourceError, match="is a local path outside allowed_file_root"):
            source_stage.fn(url, "main", None, strict)
    else:
        tree, manifest = source_stage.fn(url, "main", None, strict)
        assert manifest.name == MODEL and tree.network is listed.network
    # Local mode: no list, everything allowed, the manifest's network request honoured.
    tree, _ = source_stage.fn(url, "main", None, settings)
    assert tree.network is True


# ---- credentials -------------------------------------------------------------------------


@pytest.fixture
def server(sklearn_repo: Path, tmp_path: Path) -> Iterator[GitHttp]:
    bare_copy(sklearn_repo, tmp_path / "srv", "digits.git")
    with serving(tmp_path / "srv", "bot", TOKEN) as running:
        yield running


def cli(args: list[str], state: Path, api_url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "SHIPYARD_STATE_DIR": str(state),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_URL": api_url.removesuffix("/api"),
    }
    return subprocess.Popen(
        [SHIPYARD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def recorded(flow_run_ids: list[str]) -> str:
    """The runs' names, parameters and every log line the Prefect API holds for them."""
    ids = [UUID(i) for i in flow_run_ids]
    APILogWorker.drain_all(timeout=10)  # this process's logs, sent in the background, are sent now
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200
        )
    assert len(runs) == len(ids) and {log.flow_run_id for log in logs} == set(ids)
    return json.dumps(
        [{"name": r.name, "parameters": r.parameters} for r in runs]
        + [log.message for log in logs],
        default=str,
    )


def test_a_token_in_the_url_appears_nowhere(
    server: GitHttp,
    tmp_path: Path,
    prefect_server: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`shipyard release URL-with-token` as a subprocess (-v: Prefect's logs too, --json);
    meanwhile in this process, with the token handed over out of band as the CLI does, a wrong
    token the host refuses and a missing ref. Then the token is looked for everywhere they
    left anything."""
    url = server.repo_url("digits.git")
    state = tmp_path / "cli-state"
    running = cli(
        [
            "release",
            url.replace("http://", f"http://bot:{TOKEN}@"),
            *("--ref", "main", "--until", "source", "--json", "-v"),
        ],
        state,
        prefect_server,
    )
    failures = []
    for token, ref, expected in (
        (TOKEN + "-wrong", "main", "Cannot clone"),
        (TOKEN, "v9", "'v9' does not exist"),
    ):
        monkeypatch.setenv(CREDENTIALS_ENV, json.dumps({url: f"bot:{token}"}))
        with pytest.raises(SourceError, match=expected) as failed:
            release(source=url, ref=ref, until="source", settings=settings)
        assert url in str(failed.value)
        failures.append(" | ".join(map(str, chain(failed.value))))
    stdout, stderr = running.communicate(timeout=300)
    assert running.returncode == 0, stderr
    last = json.loads(stdout.strip().splitlines()[-1])
    assert last["status"] == "stopped after source" and last["source"] == url
    outputs = [*failures, caplog.text, stdout, stderr]
    with get_client(sync_client=True) as client:  # the failed runs too, by their source
        runs = client.read_flow_runs(limit=200)
    run_ids = [str(r.id) for r in runs if r.parameters.get("source") == url]
    assert len(run_ids) == 3
    shown = "\n".join(outputs) + recorded(run_ids)
    for secret in (TOKEN, HEADER, "bot:"):
        assert secret not in shown
        for where in (state, settings.state_dir):
            held = [
                p for p in where.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
            ]
            assert held == [], (secret, held)
    assert server.refused >= 1 and not [r for r in server.requests if TOKEN in r]


def test_the_flow_refuses_a_source_with_credentials_without_echoing_them(
    settings: Settings,
) -> None:
    with pytest.raises(SourceError, match="carries credentials") as e:
        release(
            source=f"https://bot:{TOKEN}@git.example.com/team/digits.git",
            until="source",
            settings=settings,
        )
    assert TOKEN not in str(e.value) and "https://git.example.com/team/digits.git" in str(e.value)


@pytest.mark.parametrize("kind", ["environment variable", "Prefect Secret block"])
def test_an_entrys_named_credentials_are_sent_for_its_url(
    server: GitHttp,
    tmp_path: Path,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    url = server.repo_url("digits.git")
    name = f"digits-git-token-{tmp_path.name[-8:].lower().replace('_', '-')}"
    if kind == "environment variable":
        monkeypatch.setenv(name, f"bot:{TOKEN}")
    else:
        Secret(value=f"bot:{TOKEN}").save(name, overwrite=True)
    strict = allowing(settings, tmp_path, entry(url, credentials=name))
    summary = release(source=url, ref="main", until="source", settings=strict)
    assert summary.status == "stopped after source" and summary.source == url
    assert server.refused == 0
    assert TOKEN not in recorded([str(summary.flow_run_id)])


# ---- the pushed commit --------------------------------------------------------------------


def test_a_commit_not_on_the_pushed_branch_fails_the_run_naming_the_rule(
    sklearn_repo: Path, settings: Settings
) -> None:
    git(sklearn_repo, "checkout", "-q", "-b", "side")
    edit_manifest(sklearn_repo, "seed: 0", "seed: 3")
    side = commit_all(sklearn_repo, "Only on side")
    git(sklearn_repo, "checkout", "-q", "main")
    with pytest.raises(SourceError, match=f"Commit {side} is not on branch 'main'") as e:
        release(source=sklearn_repo.as_uri(), ref=side, branch="main", settings=settings)
    assert "must be reachable from its branch" in str(e.value)
    assert audit.read(settings) == []


def test_an_older_delivery_is_skipped_and_a_force_push_back_releases_it_again(
    sklearn_repo: Path, settings: Settings
) -> None:
    url = sklearn_repo.as_uri()
    older = git(sklearn_repo, "rev-parse", "HEAD")
    edit_manifest(sklearn_repo, "seed: 0", "seed: 1")
    newer = commit_all(sklearn_repo, "Reseed")

    late = release(source=url, ref=older, branch="main", until="source", settings=settings)
    assert late.status == f"skipped: {older} is no longer the tip of main (now {newer})"
    assert task_states(str(late.flow_run_id)) == {"source": "Completed", "tip": "Completed"}

    git(sklearn_repo, "reset", "-q", "--hard", older)  # what a force-push back does to main
    again = release(source=url, ref=older, branch="main", until="source", settings=settings)
    assert again.status == "stopped after source" and again.git_sha == older
    outcomes = [e["outcome"] for e in audit.read(settings, MODEL)]
    assert outcomes == [late.status, "stopped after source"]


def test_the_tip_is_checked_again_under_the_build_lock(
    sklearn_repo: Path, settings: Settings
) -> None:
    """A newer commit pushed while the release waits for the model's build lock: skipped once
    the lock is held, nothing registered."""
    url = sklearn_repo.as_uri()
    pushed = git(sklearn_repo, "rev-parse", "HEAD")
    settings = settings.model_copy(update={"sandbox": "off"})  # data in-process: fast
    checked = threading.Event()

    class TipChecked(logging.Handler):
        """The first tip check is the last stage before the lock (data runs under it)."""

        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "stage", "") == "tip" and record.getMessage() == "finished":
                checked.set()

    handler = TipChecked()
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    result: dict[str, Any] = {}
    try:
        with concurrency(build_lock(MODEL), occupy=1, timeout_seconds=60, strict=True):
            worker = threading.Thread(
                target=lambda: result.update(
                    summary=release(
                        source=url, ref=pushed, branch="main", until="data", settings=settings
                    )
                )
            )
            worker.start()
            assert checked.wait(120), "the release did not check the tip before the lock"
            time.sleep(1)  # at the lock by now (it is taken here)
            edit_manifest(sklearn_repo, "seed: 0", "seed: 2")
            newer = commit_all(sklearn_repo, "Pushed while the release waited")
        worker.join(120)
    finally:
        progress.removeHandler(handler)
    summary = result["summary"]
    assert summary.status == f"skipped: {pushed} is no longer the tip of main (now {newer})"
    mlflow = registry.client(settings)
    assert mlflow.search_model_versions(f"name = '{MODEL}'") == []
    assert mlflow.get_run(str(summary.mlflow_run_id)).info.status == "KILLED"
    assert audit.read(settings, MODEL)[-1]["outcome"] == summary.status


def test_a_deployment_run_given_settings_as_a_parameter_is_refused(
    sklearn_repo: Path, settings: Settings
) -> None:
    """Whoever can start a run (UI, API) cannot hand it settings: another registry, the sandbox
    off, a wider allow-list. Only a direct call (the CLI, tests) passes its own."""
    from prefect.flow_engine import run_flow
    from prefect.states import State

    from shipyard.errors import ShipyardError

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("release")
        deployment_id = client.create_deployment(flow_id=flow_id, name="settings-refused")
        wanted = {"source": sklearn_repo.as_uri(), "ref": "main", "until": "source"}
        run = client.create_flow_run_from_deployment(
            deployment_id, parameters={**wanted, "settings": {"sandbox": "off"}}
        )
    state = run_flow(release, flow_run=run, parameters={**wanted, "settings": settings},
                     return_type="state")  # fmt: skip
    assert isinstance(state, State) and state.is_failed()
    with pytest.raises(
        ShipyardError, match="`settings` was given as a parameter of a deployment run"
    ):
        state.result()
