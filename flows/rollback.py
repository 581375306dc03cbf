"""The `rollback` flow. Entrypoint for the checkout's prefect.yaml (`flows/rollback.py:rollback`).

The flow lives in the installed package, `shipyard/flows/rollback.py`; this file only names it.
"""

from shipyard.flows.rollback import rollback

__all__ = ["rollback"]
