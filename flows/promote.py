"""The `promote` flow. Entrypoint for the checkout's prefect.yaml (`flows/promote.py:promote`).

The flow lives in the installed package, `shipyard/flows/promote.py`; this file only names it.
"""

from shipyard.flows.promote import promote

__all__ = ["promote"]
