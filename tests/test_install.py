"""Shipyard installed as users install it: a wheel of this checkout in a fresh venv, run from
another directory. Nothing may come from the checkout: not the code, not prefect.yaml, not the
Dockerfile template or the server's lock.

The venv gets Shipyard itself from the wheel (`pip install --no-deps`) and its dependencies from
the test environment's site-packages through a `.pth` line, which adds that directory to
`sys.path` without running its `.pth` files (so the checkout's editable install stays out).
Installing every dependency again would take minutes and test pip, not Shipyard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.support.projects import EXAMPLES, ROOT

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding Shipyard from a wheel of this checkout; returns its bin directory."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, cwd=root,
    )  # fmt: skip
    target = root / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    python = target / "bin" / "python"
    [wheel] = wheels.glob("shipyard-*.whl")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, cwd=root,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "shipyard-test-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return target / "bin"


def run(
    bin_dir: Path, args: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env={**env, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_installed_package_claims_no_generic_names_and_carries_its_data(
    installed: Path, tmp_path: Path
) -> None:
    probe = (
        "import importlib.util as u, json, shipyard, shipyard_serving\n"
        "from shipyard.image.context import LOCK, TEMPLATE\n"
        "from shipyard.stack.services import PREFECT_YAML\n"
        "print(json.dumps({'generic': [n for n in ('flows', 'tasks', 'deployments', 'serving')"
        " if u.find_spec(n)], 'package': shipyard.__file__, 'lock': LOCK.is_file(),"
        " 'template': TEMPLATE.is_file(), 'prefect_yaml': PREFECT_YAML.is_file()}))\n"
    )
    done = run(installed, [str(installed / "python"), "-c", probe], tmp_path, dict(os.environ))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["generic"] == []  # `import tasks` in a model project never finds Shipyard's
    assert str(installed.parent) in found["package"] and str(ROOT) not in found["package"]
    assert found["lock"] and found["template"] and found["prefect_yaml"]
    tasks = run(installed, [str(installed / "python"), "-c", "import tasks"], tmp_path, {})
    assert "No module named 'tasks'" in tasks.stderr


def test_the_installed_cli_releases_from_another_directory(
    installed: Path, tmp_path: Path, prefect_server: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(EXAMPLES / "digits-sklearn", elsewhere / "digits-sklearn")
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "SHIPYARD_STATE_DIR": str(tmp_path / "state"),
        "SHIPYARD_LATENCY_RUNS": "20",
    }
    done = run(
        installed,
        [str(installed / "shipyard"), "release", "digits-sklearn", "--until", "register", "--json"],
        elsewhere,
        env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "registered" and summary["version"] == "1"
    assert summary["model"] == "digits-sklearn" and summary["variant"] == "int8"
