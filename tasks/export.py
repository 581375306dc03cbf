"""Stage task(s) export: lives in `shipyard/tasks/export.py`; this file only names it."""

from shipyard.tasks.export import export

__all__ = ["export"]
