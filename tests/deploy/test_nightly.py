"""The nightly rebuild: same base, same digest, no rollout; a patched base, a new digest, a
gated redeploy of the same version; never at the same time as a build of the model."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.concurrency.sync import concurrency

from shipyard import engine, registry
from shipyard.flows.nightly import nightly_rebuild
from shipyard.flows.rollout import build_lock
from tests.support.endpoints import MODEL, Endpoint, serving_containers

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("prefect_server")]


def rebuilds_since(since: datetime) -> list[datetime]:
    """When each `rebuild_image` task run of a nightly-rebuild flow run started since `since`
    began (read through Prefect's API); a run not yet started is at its creation time."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["nightly-rebuild"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
        )
        if not runs:
            return []
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[r.id for r in runs])
            )
        )
    return [t.start_time or t.created for t in tasks if t.name.startswith("rebuild_image-")]


def test_an_unchanged_base_rebuilds_the_same_digest_and_does_not_redeploy(
    endpoint: Endpoint,
) -> None:
    before = endpoint.deployment()
    [result] = nightly_rebuild(models=[MODEL], settings=endpoint.settings)
    if result.get("redeployed"):
        # The champion's image was built on another base (another test's patched one): this
        # rebuild put it on today's; the next one must find nothing to do.
        before = endpoint.deployment()
        [result] = nightly_rebuild(models=[MODEL], settings=endpoint.settings)
    version = registry.client(endpoint.settings).get_model_version(MODEL, result["version"])
    assert result["new_digest"] == result["old_digest"] == version.tags["image_digest"]
    assert not result.get("redeployed") and "unchanged" in result["why"]
    after = endpoint.deployment()
    assert after.instances == before.instances  # same containers: nothing was rolled out


def test_a_nightly_rebuild_waits_while_a_build_of_the_model_holds_its_lock(
    endpoint: Endpoint,
) -> None:
    since = datetime.now(UTC)
    results: list[list[dict[str, Any]]] = []
    nightly = threading.Thread(
        target=lambda: results.append(nightly_rebuild(models=[MODEL], settings=endpoint.settings))
    )
    with concurrency(build_lock(MODEL), occupy=1, strict=True):  # a release is building
        nightly.start()
        time.sleep(4)
        assert nightly.is_alive()
        assert rebuilds_since(since) == []  # it has not started rebuilding
        released = datetime.now(UTC)
    nightly.join(timeout=300)
    assert not nightly.is_alive()
    [[result]] = results
    assert result["model"] == MODEL and result["new_digest"].startswith("sha256:"), result
    [started] = rebuilds_since(since)
    assert started >= released


def test_a_patched_base_changes_the_digest_and_redeploys_the_same_version(
    endpoint: Endpoint,
) -> None:
    settings = endpoint.settings
    client = engine.engine(settings)
    base = engine.base_image(settings)
    context = settings.state_dir / "patched-base"
    context.mkdir(exist_ok=True)
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
