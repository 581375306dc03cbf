"""The `release` flow: source → … → deploy. Entrypoint for the checkout's prefect.yaml (`flows/release.py:release`).

The flow lives in the installed package, `shipyard/flows/release.py`; this file only names it.
"""

from shipyard.flows.release import release

__all__ = ["release"]
