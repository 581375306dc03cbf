"""Stage task(s) rebuild_image: lives in `shipyard/tasks/rebuild_image.py`; this file only names it."""

from shipyard.tasks.rebuild_image import rebuild_image

__all__ = ["rebuild_image"]
