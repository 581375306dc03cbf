"""The stack's base image: Debian bookworm with python3, where the same Debian package set
gives the same bytes, so two machines that build it push the same digest.

Debian's `mmdebstrap` builds the root (variant minbase plus python3, python3-venv and
ca-certificates) with `SOURCE_DATE_EPOCH` fixed, which it passes to every maintainer script
(`/etc/shadow`'s last-change days come from it) and after which it removes its own logs and
caches. What a build still stamps on the root is removed here: the host's resolv.conf and
hostname, device nodes, bytecode, docs, caches and logs. The package set (name, version,
architecture of every installed package) is written into the root as `PACKAGES_FILE`; the
root's tar is imported and normalized (`shipyard.image.normalize`, as release images are) and
pushed. `base_packages` reads the package set back from an image.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError, DockerException

from shipyard.engine import RegistryLogin, push
from shipyard.errors import StackError
from shipyard.image.normalize import normalize
from shipyard.image.packages import PACKAGES_FILE, DebianPackage, parse_status

Say = Callable[[str], None]
REPOSITORY = "shipyard/base"
TAG = "bookworm-python3.11"
SUITE = "bookworm"
INCLUDE = ("python3", "python3-venv", "ca-certificates")
# Debian's own images take updates and security fixes too; the package set they yield is
# recorded with the image, so a later build with other versions is a new digest, not a surprise.
SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
SOURCE_DATE_EPOCH = 1686355200
"""2023-06-10T00:00:00Z, the release of Debian 12 "bookworm": every file time, the config's
`created` and `/etc/shadow`'s last-change days. A constant, because the bytes must depend on
the package set only: a Release file's date changes whenever the archive is signed again (the
security suite's at least weekly) with the same packages in it, and a date derived from the
packages would need them resolved before the build that resolves them. The package set, not a
time, says what is in the image."""
# Not needed at run time, and most of a Debian root's size: docs, locales, caches, logs; the
# host's files mmdebstrap copies in; device nodes (the engine mounts /dev).
_STRIP = (
    "var/cache",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/doc",
    "usr/share/locale",
    "usr/share/man",
    "usr/share/info",
    "usr/lib/x86_64-linux-gnu/gconv",
    "dev",
)
_HOST_FILES = ("etc/resolv.conf", "etc/hostname")
_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)


@dataclass(frozen=True)
class Base:
    """A built and pushed base image."""

    reference: str
    """repository@digest: what builds use."""
    image_id: str
    packages: list[DebianPackage]
    size_bytes: int


def packages_json(packages: list[DebianPackage]) -> str:
    """`PACKAGES_FILE`'s content: the same package set always gives the same text."""
    return json.dumps(
        {
            "distribution": "debian",
            "suite": SUITE,
            "packages": [p._asdict() for p in sorted(packages)],
        },
        indent=1,
        sort_keys=True,
    )


def mmdebstrap_command(rootfs: Path, debs: Path) -> list[str]:
    """The mmdebstrap call that builds `rootfs`, reusing and refilling the .deb cache `debs`.

    apt checks each cached .deb against the signed index, so the cache changes the time a
    build takes, never what it installs; `apt-get clean` empties it from the root at the end.
    """
    cache, cached = '"$1"/var/cache/apt/archives', shlex.quote(str(debs))
    return [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        "--variant=minbase",
        f"--include={','.join(INCLUDE)}",
        # /bin, /lib, /sbin as links into /usr and usr-is-merged installed, as debootstrap does;
        # without it, apt picks usrmerge and perl with it.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--skip=essential/unlink",  # the essential .debs stay, for the cache
        f"--setup-hook=mkdir -p {cache} && find {cached} -maxdepth 1 -name '*.deb' "
        f"-exec cp -t {cache} {{}} +",
        f"--customize-hook=find {cache} -maxdepth 1 -name '*.deb' -exec cp -n -t {cached} {{}} +",
        SUITE,
        str(rootfs),
        *SOURCES,
    ]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def strip(rootfs: Path) -> None:
    """Remove what differs between builds or is not needed at run time."""
    for relative in _STRIP:
        for child in (rootfs / relative).glob("*") if (rootfs / relative).is_dir() else []:
            _remove(child)
    for relative in _HOST_FILES:
        _remove(rootfs / relative)
    for cache in sorted(rootfs.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def _prune(debs: Path, packages: list[DebianPackage]) -> None:
    """Keep in the cache only the .debs of the package set just installed."""
    wanted = {f"{p.name}_{p.version.replace(':', '%3a')}_{p.architecture}.deb" for p in packages}
    for deb in debs.glob("*.deb"):
        if deb.name not in wanted:
            deb.unlink()


def _environment() -> dict[str, str]:
    """What mmdebstrap and the maintainer scripts it runs see: the fixed time, and of the
    caller's environment only the proxies apt needs (a locale or TZ could change the bytes)."""
    proxies = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
    return {
        **proxies,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
    }


def _refuse_mounts(rootfs: Path) -> None:
    """Removing a root that still has /dev or /proc mounted (mmdebstrap cut off) would
    remove the host's device nodes: refuse."""
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    inside = [m.split()[1] for m in mounts if m and m.split()[1].startswith(f"{rootfs}/")]
    if inside:
        raise StackError(
            f"{rootfs} still has {', '.join(inside)} mounted (an mmdebstrap cut off?): "
            f"umount them, then remove {rootfs}."
        )


def build_rootfs(rootfs: Path, debs: Path, say: Say) -> list[DebianPackage]:
    """Build the root in `rootfs` (replaced) with mmdebstrap; return its package set."""
    _refuse_mounts(rootfs)
    shutil.rmtree(rootfs, ignore_errors=True)
    debs.mkdir(parents=True, exist_ok=True)
    cached = len(list(debs.glob("*.deb")))
    say(
        f"base: building a Debian {SUITE} root with {', '.join(INCLUDE)} (mmdebstrap, "
        f"{cached} cached .debs in {debs}; about a minute)"
    )
    done = subprocess.run(
        mmdebstrap_command(rootfs, debs), capture_output=True, text=True, env=_environment()
    )
    if done.returncode:
        raise StackError(
            f"mmdebstrap failed (exit {done.returncode}); the root in {rootfs} is incomplete: "
            f"{done.stdout[-800:]}{done.stderr[-800:]}"
        )
    _refuse_mounts(rootfs)
    packages = parse_status((rootfs / "var/lib/dpkg/status").read_text())
    _prune(debs, packages)
    strip(rootfs)
    record = rootfs / PACKAGES_FILE
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(packages_json(packages))
    return packages


def write_layer(rootfs: Path, archive: Path) -> Path:
    """The root as a tar (entries sorted by name, as `tarfile` adds a directory's); times and
    owner names are normalized after the import."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.iterdir()):
            tar.add(path, arcname=path.name)
    return archive


def build(
    client: docker.DockerClient, registry: RegistryLogin, work: Path, debs: Path, say: Say
) -> Base:
    """Build the base in `work` (its root and tar, removed after), push it, and return it."""
    start = time.perf_counter()
    rootfs, archive = work / "rootfs", work / "rootfs.tar"
    packages = build_rootfs(rootfs, debs, say)
    write_layer(rootfs, archive)
    shutil.rmtree(rootfs, ignore_errors=True)
    repository = f"{registry.address}/{REPOSITORY}"
    try:
        answer = client.api.import_image_from_file(str(archive), changes=list(_CHANGES))
        imported = str(json.loads(answer)["status"])
    except (APIError, DockerException, ValueError, KeyError) as e:
        raise StackError(f"The engine did not import the base from {archive}: {e}") from e
    finally:
        archive.unlink(missing_ok=True)
    try:
        image_id = normalize(client, imported, SOURCE_DATE_EPOCH, f"{repository}:{TAG}")
    except (APIError, DockerException, ValueError) as e:
        raise StackError(f"Normalizing the imported base {imported} failed: {e}") from e
    finally:
        with contextlib.suppress(APIError):  # shares its layer with the normalized one
            client.images.remove(imported)
    digest = push(client, repository, TAG, registry)
    image = client.images.get(image_id)
    reference = f"{repository}@{digest}"
    if reference not in image.attrs.get("RepoDigests", []):
        raise StackError(
            f"The push of {repository}:{TAG} stored {digest}, which is not the base just built "
            f"({image_id}): another build moved the tag meanwhile. Build again."
        )
    say(
        f"base: {len(packages)} Debian packages, image {image_id[:19]}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    return Base(reference, image_id, packages, int(image.attrs["Size"]))
