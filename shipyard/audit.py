"""The audit trail: who started each release, promote, rollback, undeploy and nightly redeploy,
what it changed, when, and how it ended.

Each operation appends one JSON line to `<state dir>/audit.jsonl` (mode 600; `O_APPEND` under
an exclusive `flock`, so concurrent writers never interleave or overwrite) and sends the same
record as a Prefect event, `shipyard.audit.<action>` on resource `shipyard.model.<model>`, which
the UI's event feed shows. Shipyard never rewrites the file; `shipyard audit [MODEL]` prints it.

"Who" is what the process can know: the OS user and host, the flow run and what created it
(a deployment's automation, for a webhook push, with the delivery id and pusher the receiver
put in the event), never a credential.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from shipyard.errors import Superseded
from shipyard.settings import Settings

Action = Literal[
    "release", "promote", "rollback", "undeploy", "nightly-redeploy", "scale", "rebalance"
]
_CREDENTIALS = re.compile(r"(://)[^/@\s:]+(:[^/@\s]*)?@")
_AUTHORIZATION = re.compile(r"(Authorization:\s*\w+\s+)\S+", re.IGNORECASE)


def path(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "audit.jsonl"


def scrub(text: str) -> str:
    """`text` with any URL's user and password removed (`https://u:t@h/` → `https://***@h/`),
    and any `Authorization:` header's value (as git's http.extraHeader carries a token)."""
    return _AUTHORIZATION.sub(r"\1***", _CREDENTIALS.sub(r"\1***@", text))


def who(delivery: str | None = None, pusher: str | None = None) -> dict[str, str]:
    """The identity this process can vouch for, plus the webhook's delivery and pusher."""
    actor = {"os_user": getpass.getuser(), "host": socket.gethostname()}
    with contextlib.suppress(Exception):  # outside a flow run, or a server that is not there
        from prefect.runtime import flow_run

        if flow_run.id:
            actor["flow_run"] = str(flow_run.id)
            actor["started_by"] = _created_by(str(flow_run.id))
    if delivery:
        actor["webhook_delivery"] = delivery
    if pusher:
        actor["pusher"] = pusher
    return actor


def _created_by(flow_run_id: str) -> str:
    from uuid import UUID

    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
    if run.created_by is not None:
        return f"{run.created_by.type}: {run.created_by.display_value or run.created_by.id}"
    if run.deployment_id is not None:
        return "the Prefect API (deployment run; this server records no user)"
    return "a process running the flow directly (CLI)"


def record(
    settings: Settings,
    action: Action,
    model: str,
    actor: dict[str, str],
    outcome: str,
    **what: Any,
) -> dict[str, Any]:
    """Append one entry (and send it as an event); returns it."""
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "action": action,
        "model": model,
        "outcome": scrub(outcome),
        "who": actor,
        **{k: scrub(v) if isinstance(v, str) else v for k, v in what.items() if v is not None},
    }
    file = path(settings)
    file.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    _emit(entry)
    return entry


def _emit(entry: dict[str, Any]) -> None:
    """The entry as a Prefect event, when a Prefect API is configured (best effort: the file is
    the record; an event feed that is down does not fail the operation)."""
    with contextlib.suppress(Exception):
        from prefect.events import emit_event
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            return
        emit_event(
            event=f"shipyard.audit.{entry['action']}",
            resource={
                "prefect.resource.id": f"shipyard.model.{entry['model']}",
                "prefect.resource.name": entry["model"],
            },
            payload=entry,
        )


@contextlib.contextmanager
def audited(
    settings: Settings, action: Action, model: str, actor: dict[str, str], **what: Any
) -> Iterator[dict[str, Any]]:
    """Record the block as one operation: `succeeded` (or the `outcome` the block set),
    `skipped: …` (superseded) or `failed: …` (the error on one line, at most 500 characters),
    with what the block filled into the yielded dict."""
    fields = dict(what)
    try:
        yield fields
    except Superseded as e:
        record(settings, action, model, actor, f"skipped: {e}", **fields)
        raise
    except BaseException as e:
        reason = " ".join(line.strip() for line in str(e).splitlines()) or type(e).__name__
        record(settings, action, model, actor, f"failed: {reason}"[:500], **fields)
        raise
    record(settings, action, model, actor, fields.pop("outcome", "succeeded"), **fields)


def read(settings: Settings, model: str | None = None) -> list[dict[str, Any]]:
    """The entries, oldest first (of `model` only, if given)."""
    file = path(settings)
    if not file.is_file():
        return []
    entries = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return [e for e in entries if model in (None, e["model"])]
