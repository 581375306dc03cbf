"""Stage task(s) checkout: lives in `shipyard/tasks/source.py`; this file only names it."""

from shipyard.tasks.source import checkout

__all__ = ["checkout"]
