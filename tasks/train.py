"""Stage task(s) train: lives in `shipyard/tasks/train.py`; this file only names it."""

from shipyard.tasks.train import train

__all__ = ["train"]
