"""`shipyard stack up --nodes N`: what is refused before anything starts (the swarm itself is
exercised by tests/deploy/test_swarm.py, which brings one up and removes it)."""

from __future__ import annotations

import pytest

from shipyard.errors import StackError
from shipyard.settings import Settings
from shipyard.stack import nodes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("count", [0, nodes.MAX_NODES + 1])
def test_a_node_count_out_of_range_is_refused_with_the_range(
    settings: Settings, count: int
) -> None:
    with pytest.raises(StackError, match=rf"--nodes {count}: expected 1 to {nodes.MAX_NODES}"):
        nodes.up(settings, count, "base", lambda _: None)


def test_nodes_need_the_stacks_local_registry(settings: Settings) -> None:
    remote = settings.model_copy(update={"registry": "registry.example.com:5000"})
    with pytest.raises(StackError, match="reach the stack's local registry"):
        nodes.up(remote, 2, "base", lambda _: None)
