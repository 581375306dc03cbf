"""Loading ahead while a release waits on its sandbox (`shipyard.warmup`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from shipyard import warmup

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(warmup, "_expected", [])
    monkeypatch.setattr(warmup, "_started", False)
    monkeypatch.setattr(warmup, "_thread", None)
    yield


def test_nothing_loads_until_the_process_waits_then_everything_loads_once_in_order() -> None:
    calls: list[str] = []
    sys.modules.pop("colorsys", None)
    warmup.expect(lambda: calls.append("first"), "colorsys", lambda: calls.append("last"))
    assert calls == [] and "colorsys" not in sys.modules

    thread = warmup.idle()
    assert thread is not None
    thread.join(timeout=30)
    assert calls == ["first", "last"]
    assert "colorsys" in sys.modules
    assert warmup.idle() is None  # a second wait loads nothing again


def test_a_loader_that_fails_is_left_to_fail_where_it_is_used_and_the_rest_still_load() -> None:
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("no such backend")

    warmup.expect(broken, "shipyard_no_such_module", lambda: calls.append("after"))
    thread = warmup.idle()
    assert thread is not None
    thread.join(timeout=30)
    assert calls == ["after"]


def test_a_process_that_never_waits_loads_nothing() -> None:
    assert warmup.idle() is None  # nothing expected: no thread


def test_settle_waits_for_the_loading_under_way_and_returns_at_once_without_any() -> None:
    import threading

    release = threading.Event()
    done: list[str] = []
    warmup.settle()  # nothing started: nothing to wait for
    warmup.expect(lambda: (release.wait(30), done.append("loaded")))
    thread = warmup.idle()
    assert thread is not None and done == []
    release.set()
    warmup.settle()
    assert done == ["loaded"]
