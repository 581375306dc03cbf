"""Starting the server imports what serving needs and nothing that only a scrape needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_the_app_imports_prometheus_client_only_when_scraped() -> None:
    probe = (
        "import sys, shipyard_serving.__main__, shipyard_serving.app\n"
        "print('prometheus_client' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
