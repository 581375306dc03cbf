"""Which images a registered version may be deployed from (pure: no engine)."""

from __future__ import annotations

import pytest

from shipyard.deploy.inspect import ONNX_LABEL, provenance_failures, registry_of

pytestmark = pytest.mark.unit

SHA = "c" * 64
IMAGE = f"127.0.0.1:5000/shipyard/digits@sha256:{'d' * 64}"


@pytest.mark.parametrize(
    ("image", "host"),
    [
        (IMAGE, "127.0.0.1:5000"),
        ("registry.example/shipyard/digits:v1", "registry.example"),
        ("localhost/digits", "localhost"),
        ("shipyard/digits", "docker.io"),
        ("digits", "docker.io"),
    ],
)
def test_the_registry_of_an_image_is_its_first_component_when_it_is_a_host(
    image: str, host: str
) -> None:
    assert registry_of(image) == host


def test_an_image_of_the_registry_with_the_versions_onnx_label_may_be_deployed() -> None:
    assert provenance_failures("127.0.0.1:5000", IMAGE, SHA, SHA) == []


def test_another_label_no_label_no_tag_or_another_registry_is_named() -> None:
    [other] = provenance_failures("127.0.0.1:5000", IMAGE, "e" * 64, SHA)
    assert (
        other
        == f"it has label {ONNX_LABEL}={'e' * 64}, but the version's MLflow tag onnx_sha256 is {SHA}"
    )
    [unlabelled] = provenance_failures("127.0.0.1:5000", IMAGE, None, SHA)
    assert unlabelled.startswith(f"it has no {ONNX_LABEL} label")
    [untagged] = provenance_failures("127.0.0.1:5000", IMAGE, SHA, None)
    assert "no MLflow tag onnx_sha256" in untagged
    [elsewhere] = provenance_failures("registry.example", IMAGE, None, SHA)
    assert "registry '127.0.0.1:5000', not the configured 'registry.example'" in elsewhere
