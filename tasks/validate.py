"""Stage task(s) validate: lives in `shipyard/tasks/validate.py`; this file only names it."""

from shipyard.tasks.validate import validate

__all__ = ["validate"]
