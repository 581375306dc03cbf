"""Stage task(s) crown, deploy, retire: lives in `shipyard/tasks/deploy.py`; this file only names it."""

from shipyard.tasks.deploy import crown, deploy, retire

__all__ = ["crown", "deploy", "retire"]
