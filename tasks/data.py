"""Stage task(s) load_data: lives in `shipyard/tasks/data.py`; this file only names it."""

from shipyard.tasks.data import load_data

__all__ = ["load_data"]
