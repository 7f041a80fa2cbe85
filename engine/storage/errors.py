"""Storage errors, classified: what to retry, what to report at once, and how to say it in one line.

Every failure of TensorStore (a ``ValueError`` whose text starts with an absl status code), of the
operating system (``OSError``) or of SQLite (the done-markers) falls into one of these kinds:

- ``transient``: unavailable, timed out, busy, throttled (HTTP 429/5xx, ``UNAVAILABLE``,
  ``DEADLINE_EXCEEDED``, ``EAGAIN``, ``SQLITE_BUSY``): retried with bounded exponential backoff
  (:func:`retrying`), every retry logged and counted (:func:`retry_count`);
- ``corrupt``: stored bytes that do not decode (a chunk, a shard index, the markers database): fails
  at once, naming the chunk key (or file);
- ``disk-full``: ``ENOSPC``/``EDQUOT``/``EFBIG``, ``SQLITE_FULL``: fails at once naming the disk (its
  mount point and free space);
- ``permission``: ``PERMISSION_DENIED``/``UNAUTHENTICATED``, HTTP 401/403, ``EACCES``: fails at once,
  for a cloud store naming the credentials it looks for;
- ``not-found`` and ``other``: fail at once with the store's own message, shortened.

Transient errors that outlast the retries raise :class:`StorageUnavailable`, a
:class:`~engine.errors.StorageError` the blockwise scheduler still retries later (``transient``); the
other kinds raise a plain :class:`~engine.errors.StorageError`, which it does not (the same again every
time).

TensorStore retries S3 and GCS requests itself (``s3_request_retries``: by default 32 attempts from 1 s);
``CONNECTILE_S3_RETRIES`` (attempts) and ``CONNECTILE_S3_RETRY_DELAY`` (first delay, e.g. ``100ms``) tune
that (``CONNECTILE_GCS_RETRIES`` and ``CONNECTILE_GCS_RETRY_DELAY`` for ``gs://``); :func:`retrying` adds ``CONNECTILE_STORAGE_RETRIES`` (default 4) attempts of its own around
block reads and writes and marker commits, from ``CONNECTILE_STORAGE_RETRY_DELAY`` seconds (default
0.5, doubling, at most 30 s).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeVar

from engine.errors import StorageError

if TYPE_CHECKING:
    from engine.storage.urls import Location

log = logging.getLogger(__name__)

Kind = Literal["transient", "corrupt", "disk-full", "permission", "not-found", "other"]
T = TypeVar("T")

_TS_CODES: dict[str, Kind] = {
    "UNAVAILABLE": "transient",
    "DEADLINE_EXCEEDED": "transient",
    "ABORTED": "transient",
    "CANCELLED": "transient",
    "DATA_LOSS": "corrupt",
    "PERMISSION_DENIED": "permission",
    "UNAUTHENTICATED": "permission",
    "NOT_FOUND": "not-found",
}
_ERRNO: dict[int, Kind] = {
    errno.ENOSPC: "disk-full",
    errno.EDQUOT: "disk-full",
    errno.EFBIG: "disk-full",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "permission",
    errno.ENOENT: "not-found",
    errno.EAGAIN: "transient",
    errno.EINTR: "transient",
    errno.ETIMEDOUT: "transient",
    errno.ECONNRESET: "transient",
    errno.ECONNREFUSED: "transient",
    errno.EBUSY: "transient",
    errno.ESTALE: "transient",
}
_SQLITE: dict[str, Kind] = {
    "SQLITE_BUSY": "transient",
    "SQLITE_LOCKED": "transient",
    "SQLITE_PROTOCOL": "transient",
    "SQLITE_FULL": "disk-full",
    "SQLITE_CORRUPT": "corrupt",
    "SQLITE_NOTADB": "corrupt",
    "SQLITE_READONLY": "permission",
    "SQLITE_PERM": "permission",
    "SQLITE_AUTH": "permission",
    "SQLITE_CANTOPEN": "not-found",
}
_OS_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")
_HTTP = re.compile(r"http_response_code='?(\d{3})|HTTP (?:response code|status)[: ]*(\d{3})")
_KEY = re.compile(r'(?:Error (?:reading|writing|decoding)[^"]*?|in local file |file )"([^"]+)"')
_DECODE = re.compile(r"decod|decompress|corrupt|checksum|digest|crc|truncated|invalid .*(?:compressed|data)|expected chunk length", re.I)

_lock = threading.Lock()
_retries = 0


def retry_count() -> int:
    """Transient storage errors retried in this process so far: by :func:`retrying` and by TensorStore
    itself (its ``/tensorstore/kvstore/*/retries`` metrics)."""
    return _retries + _tensorstore_retries()


def _tensorstore_retries() -> int:
    try:
        import tensorstore as ts

        metrics = ts.experimental_collect_matching_metrics("/tensorstore/kvstore/")
    except Exception:  # noqa: BLE001 - metrics are a nicety; an old TensorStore may lack them
        return 0
    total = 0
    for m in metrics:
        if m.get("name", "").endswith("/retries"):
            total += sum(int(v.get("value", 0)) for v in m.get("values", []))
    return total


def _ts_code(text: str) -> str:
    """The absl status code a TensorStore error starts with (``UNAVAILABLE: ...``), or ""."""
    found = re.match(r"([A-Z][A-Z_]+): ", text)
    return found.group(1) if found else ""


def classify(err: BaseException) -> Kind:
    """The kind of a storage failure (see the module docstring)."""
    if isinstance(err, StorageUnavailable):
        return "transient"
    if isinstance(err, sqlite3.Error):
        name = getattr(err, "sqlite_errorname", "") or ""
        kind = _SQLITE.get("_".join(name.split("_")[:2]))  # SQLITE_BUSY_SNAPSHOT -> SQLITE_BUSY
        if kind is None and name.startswith("SQLITE_IOERR"):
            return "transient"  # a flaky network file system; bounded retries, then it is reported
        if kind is None and isinstance(err, sqlite3.DatabaseError) and "not a database" in str(err):
            return "corrupt"
        return kind or "other"
    if isinstance(err, OSError) and err.errno is not None:
        return _ERRNO.get(err.errno, "other")
    text = str(err)
    os_code = _OS_CODE.search(text)
    if os_code and int(os_code.group(1)) in _ERRNO:
        return _ERRNO[int(os_code.group(1))]
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return "disk-full"
    http = _HTTP.search(text)
    if http:
        status = int(next(g for g in http.groups() if g))
        if status in (401, 403):
            return "permission"
        if status == 429 or status >= 500:
            return "transient"
    if "CURL error" in text:
        return "transient"  # connection refused/reset/timed out: the server may come back
    code = _ts_code(text)
    if code in _TS_CODES:
        return _TS_CODES[code]
    if code == "RESOURCE_EXHAUSTED":
        return "transient"  # throttling (HTTP 429); a full disk was caught above by its errno
    if code in ("FAILED_PRECONDITION", "INVALID_ARGUMENT", "OUT_OF_RANGE") and "Error reading" in text and _DECODE.search(text):
        return "corrupt"
    return "other"


class StorageUnavailable(StorageError):
    """A store still unavailable after the retries: the scheduler may try the block again later."""

    transient = True


def _short(err: BaseException) -> str:
    """One short line: without TensorStore's echoed spec, source locations or HTTP bodies."""
    text = re.sub(r" \[[a-z_ ]+=.*$", "", str(err), flags=re.S)
    return " ".join(text.split())


def chunk_key(err: BaseException) -> str | None:
    """The chunk key or file a TensorStore error names, if any."""
    found = _KEY.search(str(err))
    return found.group(1) if found else None


def mount_point(path: str | os.PathLike[str]) -> str:
    """The mount point of the file system holding ``path`` (or of its nearest existing parent)."""
    probe = os.path.realpath(os.fspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    while not os.path.ismount(probe):
        probe = os.path.dirname(probe)
    return probe


def _disk(path: str) -> str:
    mount = mount_point(path)
    try:
        usage = shutil.disk_usage(mount)
        return f"the disk mounted at {mount} ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB)"
    except OSError:
        return f"the disk mounted at {mount}"


_CLOUD_CREDENTIALS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials) to credentials that may use this bucket",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run `gcloud auth application-default login`)",
}


def as_storage_error(err: BaseException, url: str, doing: str, kind: Kind | None = None, fix: str | None = None) -> StorageError:
    """One line for a storage failure while ``doing`` (e.g. ``"writing z 0:32 … of"``) ``url``;
    ``fix`` replaces the suggested fix of a corrupt store."""
    kind = kind or classify(err)
    detail = _short(err)
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if kind == "corrupt":
        key = chunk_key(err)
        return StorageError(
            f"{f'chunk {key}' if key else url} is corrupt ({detail.split(': ', 1)[-1]}) while {doing} {url}",
            fix or "restore that chunk (or the volume) from a copy, or delete the chunk to read it as empty and recompute what wrote it",
        )
    if kind == "disk-full":
        disk = _disk(chunk_key(err) or url) if scheme == "file" else "the store"
        return StorageError(
            f"{disk} is full: {doing} {url} failed ({detail})",
            "free space there or write the output to another disk, then run again (finished blocks are kept)",
        )
    if kind == "permission":
        fix = _CLOUD_CREDENTIALS.get(scheme, "fix the permissions of that path or choose another output")
        return StorageError(f"access denied {doing} {url} ({detail})", fix)
    if kind == "transient":
        return StorageUnavailable(
            f"the store is unavailable {doing} {url}, after retries ({detail})",
            "check the connection or the server and run again (finished blocks are kept)",
        )
    if kind == "not-found":
        return StorageError(f"nothing found {doing} {url} ({detail})", "check the path")
    return StorageError(f"{doing} {url} failed: {detail}", "check that the path is a complete volume and is writable")


def _setting(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise StorageError(f"{name}={value!r} is not a number", f"set {name} to a number or unset it") from None


def note_retry(err: BaseException, url: str, what: str) -> None:
    """Count one retry of a transient error and log it (``what``: where and what happens next)."""
    global _retries
    with _lock:
        _retries += 1
    log.warning("%s: %s", what, _short(err))


def retrying(
    call: Callable[[], T], url: str, doing: str, *, errors: tuple[type[BaseException], ...] = (ValueError, OSError), fix: str | None = None
) -> T:
    """``call()``, retrying transient storage errors with exponential backoff (bounded; see the module
    docstring); any other storage error, or one still failing after the retries, is raised as a
    one-line :class:`~engine.errors.StorageError` naming ``url`` (and the chunk or disk)."""
    attempts = max(1, int(_setting("CONNECTILE_STORAGE_RETRIES", 4)) + 1)
    delay = _setting("CONNECTILE_STORAGE_RETRY_DELAY", 0.5)
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except errors as err:
            if isinstance(err, StorageError) and not isinstance(err, StorageUnavailable):
                raise
            kind = classify(err)
            if kind != "transient" or attempt == attempts:
                raise as_storage_error(err, url, doing, kind, fix) from err
            wait = min(30.0, delay * 2 ** (attempt - 1))
            note_retry(err, url, f"{doing} {url}: transient storage error (attempt {attempt} of {attempts}), retrying in {wait:.2f} s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def s3_options() -> dict[str, object]:
    """Settings of TensorStore's s3 kvstore from the environment: ``CONNECTILE_S3_ENDPOINT`` (else
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``) for S3-compatible servers (MinIO, Ceph, moto…),
    ``CONNECTILE_S3_REGION`` (else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; needed with an endpoint,
    default us-east-1 there), and TensorStore's own request retries (``CONNECTILE_S3_RETRIES``,
    ``CONNECTILE_S3_RETRY_DELAY``). Credentials: TensorStore's AWS chain (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, the instance's role); without any it asks anonymously (public
    buckets), and a private bucket's 403 becomes one line naming what to set.

    Workers read these from their own environment: a local Ray cluster started by the command inherits
    them, and a driver connecting to a running cluster hands them to its workers (:func:`storage_settings`);
    credentials are not sent: give the nodes their own (an instance role, a Kubernetes Secret) or put
    them in the job's ``runtime_env`` ``env_vars``.

    >>> s3_options() if not any(k.startswith(("CONNECTILE_S3", "AWS_")) for k in os.environ) else {}
    {}
    """
    env = os.environ
    out: dict[str, object] = {}
    endpoint = env.get("CONNECTILE_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("CONNECTILE_S3_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise StorageError(f"S3 endpoint {endpoint!r} is not an http(s) URL", "set CONNECTILE_S3_ENDPOINT to e.g. http://localhost:9000")
        out["endpoint"] = endpoint.rstrip("/")
        region = region or "us-east-1"
    if region:
        out["aws_region"] = region
    retries = _retry_spec("S3")
    if retries:
        out["s3_request_retries"] = retries
    return out


def _retry_spec(prefix: str) -> dict[str, object]:
    """TensorStore's ``*_request_retries`` from ``CONNECTILE_<prefix>_RETRIES`` / ``_RETRY_DELAY`` (empty: its defaults)."""
    retries: dict[str, object] = {}
    if os.environ.get(f"CONNECTILE_{prefix}_RETRIES"):
        retries["max_retries"] = max(1, int(_setting(f"CONNECTILE_{prefix}_RETRIES", 32)))
    if os.environ.get(f"CONNECTILE_{prefix}_RETRY_DELAY"):
        retries["initial_delay"] = os.environ[f"CONNECTILE_{prefix}_RETRY_DELAY"]
    return retries


_GCS_FIX = "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run `gcloud auth application-default login`"
_reached: set[tuple[str, int]] = set()


def _gcs_credentials() -> str | None:
    """Where TensorStore will find Google credentials (its order), or None (it then asks anonymously)."""
    env = os.environ
    if env.get("GOOGLE_AUTH_TOKEN_FOR_TESTING"):
        return "GOOGLE_AUTH_TOKEN_FOR_TESTING"
    named = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        if not os.access(named, os.R_OK) or not os.path.isfile(named):
            raise StorageError(f"GOOGLE_APPLICATION_CREDENTIALS names {named}, which is not a readable file", _GCS_FIX)
        return named
    folder = env.get("CLOUDSDK_CONFIG") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config", "gcloud")
    well_known = os.path.join(folder, "application_default_credentials.json")
    return well_known if os.path.isfile(well_known) else None


def _probe(host: str, port: int, timeout: float) -> str | None:
    """Why nothing answers a TCP connection to ``host:port`` within ``timeout`` s (name look-up included), or None."""
    import socket

    why: list[str] = [f"no answer within {timeout:.0f} s"]

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            why.clear()
        except OSError as err:
            why[0] = err.strerror or str(err) or type(err).__name__

    thread = threading.Thread(target=connect, daemon=True)  # a name look-up has no timeout of its own
    thread.start()
    thread.join(timeout + 1)
    return why[0] if why else None


def _check_reachable(service: str, endpoint: str, url: str, missing: str, fix: str) -> None:
    """A one-line :class:`StorageError` when nothing answers at ``endpoint`` (checked once per process
    and host; not behind a proxy, which makes the connections itself): offline, TensorStore retries its
    requests for many minutes before failing. ``missing`` adds the credentials that are not set either."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"))
    if not host or proxied or (host, port) in _reached:
        return
    why = _probe(host, port, _setting("CONNECTILE_CONNECT_TIMEOUT", 5.0))
    if why is not None:
        raise StorageError(f"cannot reach {service} at {host}:{port} to open {url} ({why}){missing}", fix)
    _reached.add((host, port))


def gcs_options() -> dict[str, object]:
    """Settings of TensorStore's gcs kvstore: its request retries (``CONNECTILE_GCS_RETRIES``,
    ``CONNECTILE_GCS_RETRY_DELAY``). Credentials: ``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
    application-default login``'s file, or the instance's account on Google Compute Engine; without any
    TensorStore asks anonymously (public buckets), and a private bucket's 401/403 becomes one line naming
    what to set. :func:`check_store_reachable` checks before a store is opened."""
    retries = _retry_spec("GCS")
    return {"gcs_request_retries": retries} if retries else {}


def check_store_reachable(loc: Location) -> None:
    """Before a cloud store is opened: that its service answers (``TENSORSTORE_GCS_HTTP_URL`` or
    storage.googleapis.com; ``CONNECTILE_S3_ENDPOINT`` or AWS's; see :func:`_check_reachable`), and that a
    ``GOOGLE_APPLICATION_CREDENTIALS`` names a readable file. Local and memory stores pass at once."""
    if loc.scheme == "gs":
        creds = _gcs_credentials()
        _check_reachable(
            "Google Cloud Storage", os.environ.get("TENSORSTORE_GCS_HTTP_URL") or "https://storage.googleapis.com", loc.url(),
            "" if creds else ", and no Google Cloud credentials are set",
            f"check the network connection (or set HTTPS_PROXY); for a private bucket {_GCS_FIX}",
        )  # fmt: skip
    elif loc.scheme == "s3":
        _check_s3_reachable(loc.url(), s3_options())


def _check_s3_reachable(url: str, options: dict[str, object]) -> None:
    """That the S3 endpoint of ``options`` (:func:`s3_options`; else AWS's) answers, see :func:`_check_reachable`."""
    region = options.get("aws_region")
    endpoint = str(options.get("endpoint") or f"https://s3{f'.{region}' if region else ''}.amazonaws.com")
    home = os.environ.get("HOME") or os.path.expanduser("~")
    creds = any(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"))
    creds = creds or os.path.isfile(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"))
    _check_reachable(
        "S3", endpoint, url, "" if creds else ", and no AWS credentials are set",
        f"check the network connection and CONNECTILE_S3_ENDPOINT (or set HTTPS_PROXY); for a private bucket {_CLOUD_CREDENTIALS['s3']}",
    )


#: Settings (not secrets) of the stores, handed to the Ray workers of a cluster the driver connects to.
SETTINGS = ("CONNECTILE_S3_", "CONNECTILE_GCS_", "CONNECTILE_STORAGE_", "CONNECTILE_CONNECT_TIMEOUT", "AWS_ENDPOINT_URL", "AWS_REGION",
            "AWS_DEFAULT_REGION", "TENSORSTORE_GCS_HTTP_URL")  # fmt: skip


def storage_settings() -> dict[str, str]:
    """The storage settings of this process's environment (endpoints, regions, retries; never
    credentials) for ``runtime_env={"env_vars": ...}``: workers of an already-running cluster were started
    with the cluster's environment, not the driver's.

    >>> import os; os.environ["CONNECTILE_S3_ENDPOINT"] = "http://minio:9000"; os.environ["AWS_SECRET_ACCESS_KEY"] = "s"
    >>> storage_settings()["CONNECTILE_S3_ENDPOINT"], "AWS_SECRET_ACCESS_KEY" in storage_settings()
    ('http://minio:9000', False)
    >>> del os.environ["CONNECTILE_S3_ENDPOINT"], os.environ["AWS_SECRET_ACCESS_KEY"]
    """
    return {k: v for k, v in os.environ.items() if k.startswith(SETTINGS)}
