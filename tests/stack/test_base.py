"""The stack's base image: the same Debian package set gives the same bytes; the package set is
recorded in the stack state and in the image."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard import engine
from shipyard.image import packages
from shipyard.image.packages import DebianPackage
from shipyard.settings import Settings
from shipyard.stack import base
from shipyard.stack import engine as stack_engine
from shipyard.stack import state as stack_state

STATUS = """Package: python3
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 3.11.2-1+b1
Description: interactive high-level object-oriented language (default version)
 Python, the high-level, interactive object oriented language,
 .
 Version: 9.9 (a continuation line, not a field)

Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134
Conffiles:
 /etc/adduser.conf 5a4ea6a6cf2e8a1bd9e0fbc8e3b3ff1f

Package: removed-but-configured
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""


@pytest.mark.unit
def test_the_dpkg_status_gives_the_installed_packages_sorted() -> None:
    assert base.parse_status(STATUS) == [
        DebianPackage("adduser", "3.134", "all"),
        DebianPackage("python3", "3.11.2-1+b1", "amd64"),
    ]


@pytest.mark.unit
def test_the_package_file_depends_on_the_set_only() -> None:
    packages = base.parse_status(STATUS)
    assert base.packages_json(packages) == base.packages_json(packages[::-1])
    assert '"name": "adduser"' in base.packages_json(packages)


@pytest.mark.unit
def test_strip_removes_host_files_bytecode_caches_logs_and_device_nodes(tmp_path: Path) -> None:
    for relative in (
        "etc/resolv.conf",
        "etc/hostname",
        "etc/passwd",
        "dev/null",
        "var/log/apt/history.log",
        "var/cache/debconf/config.dat",
        "usr/lib/python3.11/__pycache__/os.cpython-311.pyc",
        "usr/lib/python3.11/os.py",
        "usr/share/doc/python3/copyright",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x")
    base.strip(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["etc/passwd", "usr/lib/python3.11/os.py"]
    assert (tmp_path / "dev").is_dir() and (tmp_path / "var/log").is_dir()


@pytest.mark.unit
def test_mmdebstrap_builds_minbase_with_python_from_bookworm_and_its_updates() -> None:
    command = base.mmdebstrap_command(Path("/stack/rootfs"), Path("/stack/my debs"))
    assert command[:4] == ["mmdebstrap", "--mode=root", "--format=directory", "--variant=minbase"]
    assert "--include=python3,python3-venv,ca-certificates" in command
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr" in command  # no usrmerge, no perl
    assert any("'/stack/my debs'" in arg for arg in command)  # the cache path quoted for sh
    assert command[-3:] == list(base.SOURCES)


@pytest.mark.docker
def test_two_clean_stacks_build_the_same_base_and_record_its_packages(
    tmp_path: Path, docker_stack: dict[str, str]
) -> None:
    client = engine.engine()
    login = engine.registry_login(Settings())
    debs = tmp_path / "debs"  # empty: the first build downloads, the second reuses
    built = []
    for name in ("a", "b"):
        settings = Settings(stack_dir=tmp_path / name)
        built.append(stack_engine.build_base(settings, client, login, print, debs))
        state = stack_state.read(settings)
        assert state["base_image"] == built[-1].reference
        assert [DebianPackage(*p) for p in state["base_packages"]] == built[-1].packages
    first, second = built
    # Otherwise Debian published an update between the two builds: not what is tested here.
    assert second.packages == first.packages, "the package sets differ: run the test again"
    assert second.image_id == first.image_id
    assert second.reference == first.reference  # the same manifest digest
    python3 = [p for p in first.packages if p.name == "python3"]
    assert len(python3) == 1 and python3[0].version.startswith("3.11."), python3
    # What the image records, and what its dpkg status says (the reading of a Debian base
    # that Shipyard did not build), are that set.
    assert packages.base_packages(client, first.reference) == first.packages
    container = client.containers.create(first.reference, ["rm", f"/{base.PACKAGES_FILE}"])
    try:
        container.start()
        assert container.wait()["StatusCode"] == 0
        unrecorded = container.commit()
    finally:
        container.remove(force=True)
    try:
        assert packages.base_packages(client, str(unrecorded.id)) == first.packages
    finally:
        client.images.remove(str(unrecorded.id))
