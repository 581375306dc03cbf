"""The checkout's prefect.yaml and the packaged one that `stack up` registers declare the same
deployments; only their entrypoints differ (files under flows/ against module paths), and both
name the same flows."""

from __future__ import annotations

import importlib
import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.stack.services import PREFECT_YAML, deployment_spec
from tests.support.projects import ROOT

pytestmark = pytest.mark.unit


def deployments(text: str) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in yaml.safe_load(text)["deployments"]}


def test_the_packaged_prefect_yaml_declares_what_the_checkouts_does() -> None:
    checkout = deployments((ROOT / "prefect.yaml").read_text())
    packaged = deployments(PREFECT_YAML.read_text())
    assert set(checkout) == set(packaged) == {"release", "nightly-rebuild", "rollback", "promote"}
    for name, declared in checkout.items():
        without = {k: v for k, v in declared.items() if k != "entrypoint"}
        assert without == {k: v for k, v in packaged[name].items() if k != "entrypoint"}, name


def test_both_entrypoints_of_each_deployment_name_the_same_flow() -> None:
    checkout = deployments((ROOT / "prefect.yaml").read_text())
    for name, declared in deployments(PREFECT_YAML.read_text()).items():
        module, _, attribute = declared["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module), attribute)
        path, _, function = checkout[name]["entrypoint"].partition(":")
        assert path.startswith("flows/") and function == attribute
        assert runpy.run_path(str(ROOT / path))[function] is flow, name


def test_on_the_forked_pool_each_deployment_loads_its_own_flow_where_stack_up_ran(
    tmp_path: Path,
) -> None:
    """The stack's forked process pool skips the pull step (Prefect's engine loads the flow from
    `PREFECT__FLOW_ENTRYPOINT`, in the directory the step would change to); the docker pool and
    a team's Prefect keep it."""
    from prefect.flows import load_flow_from_entrypoint

    forked = deployment_spec("shipyard", tmp_path)
    kept = deployment_spec("shipyard-docker")
    assert forked["pull"] == kept["pull"] == yaml.safe_load(PREFECT_YAML.read_text())["pull"]
    for deployment in forked["deployments"]:
        variables = deployment["work_pool"]["job_variables"]
        assert deployment["work_pool"]["name"] == "shipyard"
        assert variables == {
            "env": {"PREFECT__FLOW_ENTRYPOINT": deployment["entrypoint"]},
            "working_dir": str(tmp_path),
        }
        module, _, attribute = deployment["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module), attribute)
        assert load_flow_from_entrypoint(variables["env"]["PREFECT__FLOW_ENTRYPOINT"]) is flow
    for deployment in kept["deployments"]:
        assert deployment["work_pool"]["name"] == "shipyard-docker"
        assert "job_variables" not in deployment["work_pool"]
