"""Prefect caching keyed by the release fingerprint, kept whole in the state directory.

A task whose inputs are fully determined by the fingerprint caches under
`<task>-<fingerprint>`: a second release of unchanged inputs reuses its result, and a fresh state
directory starts clean. (The `data` stage runs before there is a release fingerprint: its
`fingerprint` is that of its own inputs, `shipyard.fingerprint.data_inputs`.) The cache is only ever a shortcut: a cached result that cannot be used
is a miss, and the task recomputes it (training is deterministic: the same bytes again).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeGuard, TypeVar

from prefect import Task, get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore

from shipyard.gates import Measurement
from shipyard.project import Dataset
from shipyard.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


def cached(stage: Task[P, R], settings: Settings) -> Task[P, R]:
    """`stage` cached by its `fingerprint` parameter, its results in `settings.cache_dir`.

    Each record (metadata and result in one file) is stored as the task's own result, not
    split through the policy's `key_storage`. With `key_storage`, Prefect stores only metadata
    beside the key and the result in the default result storage (`~/.prefect/storage`, per
    HOME and per machine); its `ResultStore.exists` then reads the metadata alone, so a key whose
    result is gone, or lies under another HOME, counts as a hit and the read fails the release
    (`Path … does not exist`, `… is outside of the base path`). Whole records live and go with
    the state directory, and Prefect's `exists` deserializes them in full.
    """
    return stage.with_options(
        cache_policy=Fingerprint(directory=settings.cache_dir),
        result_storage=settings.cache_dir,
    )


@dataclass
class Fingerprint(CachePolicy):
    """Key `<task>-<fingerprint>`; a record at that key that cannot be used is removed first.

    Prefect treats a record that exists as a hit without asking whether its result is still
    usable. Ours hold paths into the build directory (the trained model, the ONNX variants),
    and a record may be truncated by a killed process or written on another machine whose
    paths differ. So the key is only handed to Prefect once the record at it deserializes, every
    path it holds is a file, and every measured variant still has its measured sha256;
    otherwise the record is deleted, Prefect finds no record, runs the task and writes a fresh
    one under the same key. Records are read by one release at a time: the model's build lock
    (`flows/rollout.build_lock`) covers every cached stage.
    """

    directory: Path = field(kw_only=True)
    """Where the task's result records are (its `result_storage`)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str:
        key = f"{task_ctx.task.name}-{inputs['fingerprint']}"
        if (self.directory / key).exists():
            problem = unusable(self.directory, key)
            if problem is not None:
                get_run_logger().warning("Cached %s is a miss: %s; recomputing it.", key, problem)
                (self.directory / key).unlink(missing_ok=True)
        return key


def unusable(directory: Path, key: str) -> str | None:
    """Why the result record `key` in `directory` cannot be reused, or None if it can."""
    store = ResultStore(
        result_storage=LocalFileSystem(basepath=str(directory)), cache_result_in_memory=False
    )
    try:
        result = store.read(key).result  # as the task engine will read it on a hit
    except Exception as e:  # truncated or foreign bytes fail in pydantic, base64 or unpickling
        return f"unreadable record ({type(e).__name__}: {e})"
    for path in _paths(result):
        if not path.is_file():
            return f"{path} no longer exists"
    for m in _measurements(result):
        if hashlib.sha256(m.path.read_bytes()).hexdigest() != m.sha256:
            return f"{m.path} no longer has the measured sha256 {m.sha256}"
    if _hashed_dataset(result) and result[0].sha256() != result[1]:
        return f"its dataset no longer has the recorded sha256 {result[1]}"
    return None


def _hashed_dataset(value: object) -> TypeGuard[tuple[Dataset, str]]:
    """Whether `value` is the `data` stage's result: a dataset and its sha256."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], Dataset)
        and isinstance(value[1], str)
    )


def _paths(value: object) -> Iterator[Path]:
    """Every Path inside a result: dataclass fields, list and tuple items, dict values."""
    if isinstance(value, Path):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _paths(getattr(value, f.name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _paths(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _paths(item)


def _measurements(value: object) -> Iterator[Measurement]:
    if isinstance(value, Measurement):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _measurements(item)
