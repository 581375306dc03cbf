"""The values file a worker writes is the file prometheus_client's multiprocess mode reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from shipyard_serving.valuefile import INITIAL_SIZE, ValueFile

pytestmark = pytest.mark.unit


def read(path: Path) -> dict[str, float]:
    return {key: value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))}


def test_values_written_are_read_by_prometheus_client(tmp_path: Path) -> None:
    path = tmp_path / "counter_1.db"
    values = ValueFile(str(path))
    a, b = values.index("a"), values.index("b")
    values.doubles[a] = 1.5
    values.doubles[b] += 2
    values.doubles[a] += 1
    assert read(path) == {"a": 2.5, "b": 2.0}


def test_a_file_grows_past_its_first_size_and_keeps_every_value(tmp_path: Path) -> None:
    path = tmp_path / "histogram_1.db"
    values = ValueFile(str(path))
    keys = [f"key-{i:05d}-" + "x" * 100 for i in range(1000)]  # ~130 kB of entries
    for i, key in enumerate(keys):
        index = values.index(key)  # first: a new key may grow the file and replace `doubles`
        values.doubles[index] = i
    assert path.stat().st_size > INITIAL_SIZE
    assert read(path) == {key: float(i) for i, key in enumerate(keys)}


def test_a_reopened_file_continues_its_values(tmp_path: Path) -> None:
    path = tmp_path / "counter_1.db"
    first = ValueFile(str(path))
    first.doubles[first.index("a")] = 3
    again = ValueFile(str(path))  # a new process with a dead one's pid
    a, b = again.index("a"), again.index("b")
    assert again.doubles[a] == 3
    again.doubles[a] += 1
    again.doubles[b] = 1
    assert read(path) == {"a": 4.0, "b": 1.0}
