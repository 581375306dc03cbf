from pathlib import Path

import pytest
import yaml

from shipyard.errors import ManifestError
from shipyard.manifest import Framework, Variant, load_manifest, parse_manifest

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str = "digits-sklearn") -> dict:
    return yaml.safe_load((EXAMPLES / name / "shipyard.yaml").read_text())


@pytest.mark.parametrize("name", ["digits-sklearn", "digits-cnn"])
def test_reference_manifests_are_valid(name: str) -> None:
    manifest = load_manifest(EXAMPLES / name)
    assert manifest.name == name
    assert manifest.input.feature_shape == (64,)
    assert Variant.FP32 in manifest.optimize.variants


def test_unknown_framework_names_the_field_and_the_choices() -> None:
    data = example() | {"framework": "tensorflow"}
    with pytest.raises(ManifestError) as e:
        parse_manifest(data)
    assert "framework" in str(e.value)
    assert "'sklearn' or 'pytorch'" in str(e.value)
    assert "tensorflow" in str(e.value)


def test_every_bad_field_is_reported_at_once() -> None:
    data = example()
    data["gates"] = {**data["gates"], "min_accuracy": 1.5}
    data["input"] = {**data["input"], "shape": [8, 64]}
    del data["entrypoints"]
    with pytest.raises(ManifestError) as e:
        parse_manifest(data)
    message = str(e.value)
    assert "3 invalid field(s)" in message
    assert "gates.min_accuracy" in message and "1.5" in message
    assert "input.shape" in message and "dynamic batch axis" in message
    assert "entrypoints" in message


def test_a_misspelt_field_is_rejected_not_ignored() -> None:
    data = example()
    data["gates"] = {**data["gates"], "min_acuracy": 0.9}
    with pytest.raises(ManifestError, match=r"gates\.min_acuracy"):
        parse_manifest(data)


def test_entrypoints_must_be_module_colon_function() -> None:
    data = example()
    data["entrypoints"] = {"data": "data.load", "train": "train:train"}
    with pytest.raises(ManifestError, match=r"entrypoints\.data"):
        parse_manifest(data)


def test_variants_must_include_the_fp32_reference() -> None:
    data = example()
    data["optimize"] = {"variants": ["int8"]}
    with pytest.raises(ManifestError, match="must include 'fp32'"):
        parse_manifest(data)


def test_missing_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="No shipyard.yaml") as e:
        load_manifest(tmp_path)
    assert "examples/digits-sklearn" in str(e.value)


def test_invalid_yaml_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "shipyard.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(tmp_path)


def test_a_list_is_not_a_manifest() -> None:
    with pytest.raises(ManifestError, match="expected a mapping"):
        parse_manifest(["name", "framework"])


def test_canonical_json_is_stable_and_changes_with_content() -> None:
    a = parse_manifest(example())
    b = parse_manifest(dict(reversed(list(example().items()))))
    assert a.canonical_json() == b.canonical_json()
    changed = parse_manifest(example() | {"seed": 1})
    assert changed.canonical_json() != a.canonical_json()
    assert a.framework is Framework.SKLEARN


def test_a_bad_rollout_names_each_field() -> None:
    data = example() | {"deploy": {"canary_steps": [50, 10], "strategy": "big-bang", "port": 0}}
    with pytest.raises(ManifestError) as e:
        parse_manifest(data)
    message = str(e.value)
    assert "deploy.canary_steps: Value error, must rise strictly and end at 100" in message
    assert "deploy.strategy" in message and "'big-bang'" in message
    assert "deploy.port" in message


def test_the_rollout_is_not_part_of_what_defines_the_model() -> None:
    plain = parse_manifest(example())
    tuned = parse_manifest(example() | {"deploy": {"strategy": "canary", "step_seconds": 1}})
    assert plain.canonical_json() == tuned.canonical_json()
    changed = parse_manifest(example() | {"seed": 7})
    assert changed.canonical_json() != plain.canonical_json()
