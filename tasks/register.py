"""Stage task(s) register: lives in `shipyard/tasks/register.py`; this file only names it."""

from shipyard.tasks.register import register

__all__ = ["register"]
