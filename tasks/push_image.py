"""Stage task(s) push_image: lives in `shipyard/tasks/push_image.py`; this file only names it."""

from shipyard.tasks.push_image import push_image

__all__ = ["push_image"]
