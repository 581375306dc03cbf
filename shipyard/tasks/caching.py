"""Prefect caching keyed by the release fingerprint.

A task whose inputs are fully determined by the fingerprint caches under
`<task>-<fingerprint>`, with its results stored in the state directory: a second release of
unchanged inputs reuses them, and a fresh state directory starts clean.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import CacheKeyFnPolicy, CachePolicy
from prefect.context import TaskRunContext

from shipyard.settings import Settings


def _key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"{context.task.name}-{parameters['fingerprint']}"


def by_fingerprint(settings: Settings) -> CachePolicy:
    """A cache policy for tasks that take a `fingerprint` parameter."""
    return CacheKeyFnPolicy(cache_key_fn=_key).configure(key_storage=settings.cache_dir)
