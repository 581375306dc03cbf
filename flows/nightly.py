"""The `nightly-rebuild` flow. Entrypoint for the checkout's prefect.yaml (`flows/nightly.py:nightly_rebuild`).

The flow lives in the installed package, `shipyard/flows/nightly.py`; this file only names it.
"""

from shipyard.flows.nightly import nightly_rebuild

__all__ = ["nightly_rebuild"]
