"""The nightly rebuild: same base, same digest, no rollout; a patched base, a new digest, a
gated redeploy of the same version."""

from __future__ import annotations

import pytest

from shipyard import engine, registry
from shipyard.flows.nightly import nightly_rebuild
from tests.support.endpoints import MODEL, Endpoint, serving_containers

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]


def test_an_unchanged_base_rebuilds_the_same_digest_and_does_not_redeploy(
    endpoint: Endpoint,
) -> None:

    before = endpoint.deployment()
    [result] = nightly_rebuild(models=[MODEL], settings=endpoint.settings)
    version = registry.client(endpoint.settings).get_model_version(MODEL, result["version"])
    assert result["new_digest"] == result["old_digest"] == version.tags["image_digest"]
    assert not result.get("redeployed") and "unchanged" in result["why"]
    after = endpoint.deployment()
    assert after.instances == before.instances  # same containers: nothing was rolled out


def test_a_patched_base_changes_the_digest_and_redeploys_the_same_version(
    endpoint: Endpoint,
) -> None:
    settings = endpoint.settings
    client = engine.engine(settings)
    base = engine.base_image(settings)
    context = settings.state_dir / "patched-base"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {base}\nRUN echo 'openssl 3.0.99 (security fix)' > /etc/shipyard-base-patch\n"
    )
    repository = base.partition("@")[0]
    client.images.build(
        path=str(context), tag=f"{repository}:patched", pull=False, rm=True, forcerm=True
    )
    digest = engine.push(client, repository, "patched", engine.registry_login(settings))
    patched = settings.model_copy(update={"base_image": f"{repository}@{digest}"})
    aliases = endpoint.aliases()

    [result] = nightly_rebuild(models=[MODEL], settings=patched)

    assert result["redeployed"] and "changed" in result["why"], result
    assert result["base"] == f"{repository}@{digest}"
    version = registry.client(settings).get_model_version(MODEL, result["version"])
    assert version.tags["image_digest"] == result["new_digest"] != result["old_digest"]
    serving = endpoint.deployment().serving()
    assert serving is not None and serving.image.endswith(result["new_digest"])
    assert serving_containers(settings) == [aliases["champion"]]
    assert endpoint.aliases() == aliases  # the same version serves: aliases unchanged
