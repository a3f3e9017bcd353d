"""Where xlc reads a directory: a local path, or any URI `pyarrow.fs` opens (s3://bucket/prefix, gs://...,
file://...), with pyarrow's query options, e.g. `s3://bucket/prefix?endpoint_override=host:9000&scheme=http`.

`open_location` resolves one into a `Location` (a pyarrow filesystem and a path on it); everything that reads
a dataset directory, and everything that lists, verifies, downloads or prunes checkpoints, goes through one.
S3 credentials and region come from AWS's usual environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION; pyarrow also honours AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_S3) or from the query options.
A filesystem error (no such bucket, no connection) is a `DataError` naming the location; no traceback.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from xlc.errors import ConfigError, DataError

EXPECTED = "a local path or a URI that pyarrow.fs opens (s3://bucket/prefix, gs://bucket/prefix, file:///path)"


@functools.lru_cache(maxsize=32)
def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """One filesystem per URI for the life of the process: making an S3 one takes about 40 ms (it resolves
    credentials, and without an endpoint the bucket's region)."""
    return pafs.FileSystem.from_uri(uri)


@dataclasses.dataclass(frozen=True)
class Location:
    """A file or directory on a pyarrow filesystem. On the local filesystem it is also an `os.PathLike`, so
    `Path(location)`, `open` and `torch.load` take it; elsewhere `__fspath__` raises `TypeError`."""

    fs: pafs.FileSystem
    path: str  # on `fs`: no scheme, no query options
    scheme: str = ""  # "" on the local filesystem; else shown in messages: s3://bucket/prefix/meta.json

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}" if self.scheme else self.path

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self}: not on the local filesystem")
        return self.path

    def __truediv__(self, name: str) -> Location:
        return dataclasses.replace(self, path=f"{self.path.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rpartition("/")[2]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def _call(self, what: str, fn, *args):
        """fn(*args), with a filesystem error turned into a one-line `DataError` naming this location."""
        try:
            return fn(*args)
        except (OSError, pa.ArrowException) as e:
            if isinstance(e, FileNotFoundError):
                raise DataError(f"{self}: not found") from None
            raise DataError(f"{self}: cannot {what} ({_first_line(e)})") from None

    def exists(self) -> bool:
        return self._call("read", self.fs.get_file_info, self.path).type != pafs.FileType.NotFound

    def dirs(self) -> list[str]:
        """Names of the directories directly under this one, sorted ([] when it does not exist)."""
        infos = self._call("list", self.fs.get_file_info, pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def files(self) -> dict[str, int]:
        """{path relative to this directory ("/"-separated): bytes} of every file below it, at any depth ({} when
        it does not exist); one listing, so one request on an object store."""
        selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        root = self.path.rstrip("/") + "/"
        return {i.path.removeprefix(root): i.size for i in self._call("list", self.fs.get_file_info, selector)
                if i.type == pafs.FileType.File}

    def read_bytes(self) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()

        return self._call("read", read)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def delete(self) -> None:
        """Delete this directory and everything below it (nothing when it does not exist)."""
        if self.exists():
            self._call("delete", self.fs.delete_dir, self.path)

    def download(self, dest: str | Path) -> Path:
        """Copy this directory, every file below it, to the local directory `dest`."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)  # copy_files makes the directories below, not this one
        self._call("download", pafs.copy_files, self.path, str(dest), self.fs, pafs.LocalFileSystem())
        return dest


def _first_line(e: Exception) -> str:
    """pyarrow's messages can run to many lines (a JVM search path for hdfs://): the first says what failed."""
    return (str(e).splitlines() or [type(e).__name__])[0]


def absolute(where: str) -> str:
    """A local path made absolute (Ray workers and `xlc` subcommands run elsewhere); a URI as given."""
    return where if "://" in where else str(Path(where).resolve())


def open_location(where: str | Path | Location, key: str | None = None) -> Location:
    """`where` (a local path, a pyarrow.fs URI, or a `Location`) as a `Location`. A URI no pyarrow filesystem
    opens is a `ConfigError` naming `key` (the config key or option it came from), the URI and what is expected;
    one whose filesystem cannot be reached when made, a `DataError`."""
    if isinstance(where, Location):
        return where
    where = str(where)
    if "://" not in where:
        return Location(pafs.LocalFileSystem(), where.rstrip("/") or "/")
    try:
        fs, path = _filesystem(where)
    except pa.ArrowInvalid as e:
        named = f"{key}={where!r}" if key else repr(where)
        raise ConfigError(f"{named}: expected {EXPECTED}; pyarrow says: {_first_line(e)}") from None
    except OSError as e:  # e.g. S3 resolving the bucket's region, with no endpoint reachable
        raise DataError(f"{where}: cannot open ({_first_line(e)})") from None
    return Location(fs, path, "" if isinstance(fs, pafs.LocalFileSystem) else where.partition("://")[0])
