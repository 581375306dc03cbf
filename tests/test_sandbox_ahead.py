"""What a data stage's sandbox ran ahead is adopted only when it is whole, plain and of the
right inputs (`shipyard.sandbox.container.adopt`); what any sandbox wrote is reduced to plain
files before the worker reads it. No engine: these are the worker's file checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shipyard.sandbox import container

pytestmark = pytest.mark.unit


def _ran_ahead(ahead: Path, stage: str, result: dict[str, object]) -> Path:
    done = ahead / stage
    done.mkdir(parents=True)
    (done / "fp32.onnx").write_bytes(b"graph")
    (done / "result.json").write_text(json.dumps(result))
    return done


def test_a_stage_that_ran_ahead_is_moved_into_its_own_directory_with_its_log(
    tmp_path: Path,
) -> None:
    ahead, out = tmp_path / "ahead", tmp_path / "builds" / "onnx"
    _ran_ahead(ahead, "export", {"ok": True, "model_sha256": "abc"})
    (ahead / ".export.log").write_text("exporting\n")
    said: list[str] = []

    result = container.adopt(ahead, "export", out, said.append, {"model_sha256": "abc"})

    assert result == {"ok": True, "model_sha256": "abc"}
    assert sorted(p.name for p in out.iterdir()) == ["fp32.onnx"]  # no protocol file
    assert not (ahead / "export").exists()
    assert said[0] == "[export] exporting"


@pytest.mark.parametrize(
    ("result", "why"),
    [
        ({"ok": False, "kind": "ProjectError", "error": "boom"}, "failed: rerun on its own"),
        ({"ok": True, "model_sha256": "other"}, "a graph of another model"),
    ],
)
def test_a_stage_that_failed_ahead_or_was_made_from_other_inputs_is_not_adopted(
    tmp_path: Path, result: dict[str, object], why: str
) -> None:
    ahead, out = tmp_path / "ahead", tmp_path / "onnx"
    _ran_ahead(ahead, "export", result)
    assert container.adopt(ahead, "export", out, print, {"model_sha256": "abc"}) is None, why
    assert not out.exists()


def test_a_stage_directory_planted_as_a_symlink_is_never_followed(tmp_path: Path) -> None:
    host = tmp_path / "host"
    _ran_ahead(host, "train", {"ok": True})  # a host directory that looks like a result
    ahead = tmp_path / "ahead"
    ahead.mkdir()
    (ahead / "train").symlink_to(host / "train")

    assert container.adopt(ahead, "train", tmp_path / "out", print) is None
    assert (host / "train" / "result.json").is_file()  # nothing of the target touched


def test_what_a_sandbox_leaves_is_reduced_to_plain_files_before_anything_reads_it(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "registry-password"
    secret.write_text("s3cret")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "data.npz").symlink_to(secret)
    (out / "linked-dir").symlink_to(tmp_path)
    os.mkfifo(out / "sub" / "pipe")
    (out / "sub" / "model.pkl").write_bytes(b"model")

    container._give_back(out)

    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == ["sub", "sub/model.pkl"]
    assert secret.read_text() == "s3cret"
    with pytest.raises(Exception, match="did not write data.npz as a regular file"):
        container.output(out, "data.npz", "data")
