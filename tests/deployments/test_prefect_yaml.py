"""The checkout's prefect.yaml and the packaged one that `stack up` registers declare the same
deployments; only their entrypoints differ (files under flows/ against module paths), and both
name the same flows."""

from __future__ import annotations

import importlib
import runpy
from typing import Any

import pytest
import yaml

from shipyard.stack.services import PREFECT_YAML
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
