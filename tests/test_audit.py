"""The audit trail's file: one whole line per operation, whatever the concurrency; private;
no credential in it; a failure and a skip recorded as such."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from shipyard import audit
from shipyard.errors import DeployError, Superseded
from shipyard.settings import Settings

pytestmark = pytest.mark.unit


def _append_many(state_dir: str, writer: int) -> None:
    settings = Settings(state_dir=Path(state_dir))
    for i in range(50):
        audit.record(
            settings,
            "promote",
            "m",
            {"os_user": "w"},
            "succeeded",
            n=i,
            writer=writer,
            pad="x" * 3000,
        )


def test_concurrent_writers_each_leave_whole_lines_in_a_private_file(tmp_path: Path) -> None:
    # Fresh interpreters (spawn), as separate CLI and worker processes are: no Prefect settings
    # or event workers inherited from this one.
    spawn = multiprocessing.get_context("spawn")
    writers = [spawn.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    entries = audit.read(Settings(state_dir=tmp_path))
    assert len(entries) == 200
    assert {(e["writer"], e["n"]) for e in entries} == {(w, i) for w in range(4) for i in range(50)}
    assert stat.S_IMODE(audit.path(Settings(state_dir=tmp_path)).stat().st_mode) == 0o600


def test_outcomes_are_recorded_and_credentials_never_are(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    actor = audit.who(delivery="d-1", pusher="alice")
    with audit.audited(
        settings, "release", "m", actor, source="https://bob:t0ken@git.example/r.git"
    ) as what:
        what.update(version="3", outcome="deployed")
    with pytest.raises(DeployError), audit.audited(settings, "promote", "m", actor) as what:
        what["version"] = "4"
        raise DeployError("Gate 'p99' failed: 80 ms > 50 ms\nsecond line")
    with pytest.raises(Superseded), audit.audited(settings, "nightly-redeploy", "m", actor):
        raise Superseded("champion is v5, no longer v3")
    release, promote, nightly = audit.read(settings, "m")
    assert release["outcome"] == "deployed" and release["version"] == "3"
    assert release["source"] == "https://***@git.example/r.git"
    assert release["who"]["webhook_delivery"] == "d-1" and release["who"]["pusher"] == "alice"
    assert release["who"]["os_user"]
    assert (
        promote["outcome"] == "failed: Gate 'p99' failed: 80 ms > 50 ms second line"
        and promote["version"] == "4"
    )
    assert nightly["outcome"] == "skipped: champion is v5, no longer v3"
    assert "t0ken" not in audit.path(settings).read_text()
    assert audit.read(settings, "other") == []
