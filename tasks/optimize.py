"""Stage task(s) optimize: lives in `shipyard/tasks/optimize.py`; this file only names it."""

from shipyard.tasks.optimize import optimize

__all__ = ["optimize"]
