"""Volume URLs → TensorStore kvstore specs.

Accepted forms::

    path/to/data.zarr/raw        local file (relative or absolute)
    file:///abs/data.zarr/raw    local file
    memory://name/raw            in-process memory (shared by every open in this process)
    gs://bucket/data.zarr/raw    Google Cloud Storage (TensorStore's gcs kvstore; credentials and an
                                 emulator's TENSORSTORE_GCS_HTTP_URL: see
                                 :func:`engine.storage.errors.gcs_options`)
    s3://bucket/data.zarr/raw    Amazon S3 and compatibles (TensorStore's s3 kvstore; for MinIO, Ceph
                                 or another S3-compatible server set CONNECTILE_S3_ENDPOINT, see
                                 :func:`engine.storage.errors.s3_options`)

A path names an array; ``data.zarr/raw`` is the array ``raw`` in the zarr group ``data.zarr``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import StorageError

SCHEMES = ("file", "memory", "gs", "s3")


@dataclass(frozen=True)
class Location:
    """Where an array lives: a kvstore driver, a bucket (cloud only) and a path inside it."""

    scheme: str
    path: str
    bucket: str = ""

    @property
    def is_local_file(self) -> bool:
        return self.scheme == "file"

    @property
    def process_local(self) -> bool:
        """True for memory stores, which other processes (Ray workers) cannot see."""
        return self.scheme == "memory"

    def kvstore(self, subpath: str = "") -> dict[str, Any]:
        """The TensorStore kvstore spec of this folder (or of ``subpath`` inside it).

        >>> Location("memory", "a.zarr/raw").kvstore()
        {'driver': 'memory', 'path': 'a.zarr/raw/'}
        """
        # A folder path ends in "/"; the root of a bucket or of memory is "" (a leading "/" would
        # be part of every key there), the root of the file system "/".
        path = self.path.rstrip("/")
        path = path + "/" if path or self.scheme == "file" else ""
        if subpath:
            path = path + subpath
        if self.scheme == "file":
            return {"driver": "file", "path": path}
        if self.scheme == "memory":
            return {"driver": "memory", "path": path}
        from engine.storage.errors import gcs_options, s3_options

        if self.scheme == "gs":
            return {"driver": "gcs", "bucket": self.bucket, "path": path, **gcs_options()}
        return {"driver": "s3", "bucket": self.bucket, "path": path, **s3_options()}

    def parent(self) -> Location:
        head = self.path.rstrip("/").rsplit("/", 1)[0] if "/" in self.path.strip("/") else ""
        if self.scheme == "file" and not head:
            head = "/"
        return Location(self.scheme, head, self.bucket)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def url(self) -> str:
        if self.scheme == "file":
            return self.path
        if self.scheme == "memory":
            return f"memory://{self.path}"
        return f"{self.scheme}://{self.bucket}/{self.path}"


def parse_url(url: str | os.PathLike[str]) -> Location:
    """Parse a volume URL or path.

    >>> parse_url("gs://bucket/a.zarr/raw")
    Location(scheme='gs', path='a.zarr/raw', bucket='bucket')
    """
    text = os.fspath(url)
    if not text:
        raise StorageError("an empty volume path was given", "name a path such as data.zarr/raw")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()  # URL schemes are case-insensitive (RFC 3986)
        if scheme not in SCHEMES:
            raise StorageError(
                f"unknown storage scheme {scheme!r} in {text!r}",
                f"use a local path or one of {', '.join(s + '://' for s in SCHEMES)}",
            )
        if scheme == "file":
            return Location("file", os.path.abspath(rest))
        if scheme == "memory":
            return Location("memory", rest.strip("/"))
        bucket, _, path = rest.partition("/")
        if not bucket:
            raise StorageError(f"no bucket in {text!r}", f"write it as {scheme}://BUCKET/path/to/array")
        return Location(scheme, path.strip("/"), bucket)
    return Location("file", os.path.abspath(text))


def local_folder(text: str | os.PathLike[str], option: str = "run_dir") -> Path:
    """``text`` as a folder on a local or shared (mounted) file system, refusing a storage URL: a run
    folder holds the manifest, the driver's lock and the done-markers (SQLite), and a pipeline's stages
    write their volumes inside it, none of which an object store can hold; ``s3:/bucket`` taken as a
    path would silently become a local folder named ``s3:``.

    >>> local_folder("s3://bucket/runs/a")
    Traceback (most recent call last):
    ...
    engine.errors.StorageError: run_dir 's3://bucket/runs/a' is an s3:// URL, but a run folder must be on a local or shared file system (it holds the run's manifest, lock and done-markers, and the stages write their volumes inside it); set run_dir to a local or mounted shared folder (e.g. /shared/runs/a); the stages' inputs may stay s3:// or gs:// URLs
    """
    raw = os.fspath(text)
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme and scheme != "file":
        name = raw.rstrip("/").rsplit("/", 1)[-1] or "run"
        raise StorageError(
            f"{option} {raw!r} is an {scheme}:// URL, but a run folder must be on a local or shared file system (it holds the run's manifest, "
            "lock and done-markers, and the stages write their volumes inside it)",
            f"set {option} to a local or mounted shared folder (e.g. /shared/runs/{name}); the stages' inputs may stay s3:// or gs:// URLs",
        )
    return Path(raw.split("://", 1)[1] if scheme else raw).expanduser()
