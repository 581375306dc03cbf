"""Prefect's server (`prefect server start`), its SQLite transactions begun IMMEDIATE.

`python -m shipyard.stack.prefect_server server start …` is `python -m prefect server start …`
with one change. Prefect's server begins its SQLite write transactions DEFERRED (IMMEDIATE only
`with_for_update`, `prefect/server/database/configurations.py`): such a transaction takes the
write lock at its first write, and if another connection has written since the transaction
first read, SQLite answers SQLITE_BUSY at once, without waiting `busy_timeout`, since a stale
snapshot cannot become a writer (https://www.sqlite.org/lang_transaction.html). The server
answers that request 503 "database is locked" and Prefect's client retries it 2 s later: a
pushed commit's run was created 2.2 to 2.7 s after the push in one or two of three commits
(`make bench-webhook`). Begun IMMEDIATE, a write transaction takes the lock first and waits for
it up to the server's `busy_timeout` (60 s) instead. Reads outside a transaction are unchanged,
and so is a server on Postgres.

The change holds in this process only. That covers every SQLite server: Prefect refuses
`--workers` above 1 on SQLite (`prefect/cli/_server_utils.py`), and one worker serves in this
process.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


def immediate_sqlite_transactions() -> None:
    """Make Prefect's SQLite configuration begin every transaction IMMEDIATE."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    begin = AioSqliteConfiguration.begin_transaction

    @asynccontextmanager
    async def begin_transaction(
        self: AioSqliteConfiguration, session: Any, with_for_update: bool = False
    ) -> AsyncIterator[Any]:
        async with begin(self, session, with_for_update=True) as transaction:
            yield transaction

    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]


def main() -> None:
    immediate_sqlite_transactions()
    sys.argv[0] = "prefect"
    runpy.run_module("prefect", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
