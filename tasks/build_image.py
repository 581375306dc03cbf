"""Stage task(s) build_image: lives in `shipyard/tasks/build_image.py`; this file only names it."""

from shipyard.tasks.build_image import build_image

__all__ = ["build_image"]
