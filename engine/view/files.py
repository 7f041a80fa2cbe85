"""A read-only HTTP file server for local zarr/n5 stores and run folders, with CORS and range requests,
for neuroglancer. It is the one file server of Connectile (``connectile view``).

Folders are mounted under short names (``/TOKEN/m0/...`` -> ``/data/run/data.zarr/...``; a run folder as
``/TOKEN/run/...``); the random token as the first path segment makes the URLs unguessable for other
pages in the same browser (the server binds 127.0.0.1 by default; ``::1`` works too). A run folder keeps
its token in ``RUN/.state/view-token`` (mode 0600) so that the report's neuroglancer link stays valid
across restarts of ``connectile view RUN``. Only regular files inside a mount are served: a symlink
that leads out of the mounted folder is 404, folders are never listed (404), the run's ``.state``
bookkeeping is not served; ``..`` segments, backslashes and NUL are refused with 400, anything else
missing is 404 (which neuroglancer reads as an empty chunk). A client that stops sending is dropped
after ``timeout`` seconds.

>>> import tempfile, pathlib, urllib.request
>>> d = pathlib.Path(tempfile.mkdtemp()); (d / "a.txt").write_bytes(b"hello")
5
>>> with FileServer({"m0": d}) as fs:
...     urllib.request.urlopen(fs.url("m0", "a.txt")).read()
b'hello'
"""

from __future__ import annotations

import ipaddress
import logging
import mimetypes
import os
import re
import secrets
import socket
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from engine.errors import ConnectileError

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
#: the mount name of a served run folder (the report's links read ``SERVE_URL/TOKEN/run/...``)
RUN_MOUNT = "run"
#: path segments never served (a run's bookkeeping: done-markers, locks, the token itself)
PRIVATE = frozenset({".state"})
#: seconds a client may stay silent before its connection is dropped
TIMEOUT = 30.0


class ViewError(ConnectileError):
    """A view that cannot be built or served."""


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1`` (with or without the brackets of a URL)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def http_server(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A threading HTTP server on ``host:port``: IPv6 for an IPv6 address (``::1``), else IPv4."""
    cls = _V6Server if ":" in host else ThreadingHTTPServer
    server = cls((host.strip("[]"), port), handler)
    server.daemon_threads = True
    return server


def run_token(run_dir: str | Path) -> str:
    """The run folder's file-server token: read from ``RUN/.state/view-token``, made (mode 0600) when
    missing. Where the run folder cannot be written, a fresh token that lasts as long as the server."""
    path = Path(run_dir) / ".state" / "view-token"
    try:
        text = path.read_text().strip()
        if _TOKEN.match(text):
            return text
        log.warning("ignoring a malformed token in %s", path)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("cannot read %s (%s); using a token for this server only", path, err)
        return secrets.token_urlsafe(16)
    token = secrets.token_urlsafe(16)
    tmp = path.with_name(f".view-token.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        log.warning("cannot keep the view token in %s (%s); links made now work only while this server runs", path, err)
    return token


class _FileHandler(BaseHTTPRequestHandler):
    server_version = "connectile-files"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    files: FileServer
    timeout = TIMEOUT  # socket timeout of each connection (StreamRequestHandler applies it)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s " + format, self.address_string(), *args)

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", self.files.allow_origin)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range, Content-Type")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges, ETag")
        self.send_header("Access-Control-Max-Age", "600")
        if self.headers.get("Access-Control-Request-Private-Network"):  # Chrome's Private Network Access
            self.send_header("Access-Control-Allow-Private-Network", "true")

    def _plain(self, status: HTTPStatus, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self._cors()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_OPTIONS(self) -> None:
        self.send_response(HTTPStatus.NO_CONTENT)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.do_GET()

    def _refuse(self) -> None:
        self.close_connection = True
        self._plain(HTTPStatus.METHOD_NOT_ALLOWED, "read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def do_GET(self) -> None:
        raw = urlsplit(self.path).path
        path = self.files.resolve(raw)
        self.files.record(raw, path)
        if isinstance(path, HTTPStatus):
            self._plain(path, path.phrase)
            return
        size = path.stat().st_size
        start, stop = 0, size
        status = HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                self._plain(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "bad range")
                return
            if m.group(1):
                start = int(m.group(1))
                stop = min(size, int(m.group(2)) + 1) if m.group(2) else size
            else:  # the last N bytes (neuroglancer reads shard indices like this)
                start, stop = max(0, size - int(m.group(2))), size
            if start >= size or start >= stop:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self._cors()
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = HTTPStatus.PARTIAL_CONTENT
        with path.open("rb") as f:
            f.seek(start)
            body = f.read(stop - start)
        self.send_response(status)
        self._cors()
        ctype = mimetypes.guess_type(path.name)[0] or ("application/json" if path.name in (".zarray", ".zattrs", ".zgroup") else "application/octet-stream")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class FileServer:
    """Serve folders read-only with CORS on ``host:port`` (default 127.0.0.1, a free port) from a thread."""

    def __init__(
        self,
        mounts: Mapping[str, str | Path],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allow_origin: str = "*",
        timeout: float = TIMEOUT,
    ) -> None:
        self.mounts: dict[str, Path] = {}
        for name, folder in mounts.items():
            if not _NAME.match(name) or name in (".", ".."):
                raise ViewError(f"mount name {name!r} must be letters, digits, '_', '-' or '.'")
            p = Path(folder).resolve()
            if not p.is_dir():
                raise ViewError(f"cannot serve {folder}: not a folder", "give the folder of a zarr store")
            self.mounts[name] = p
        self.token = token if token is not None else secrets.token_urlsafe(16)
        self.allow_origin = allow_origin
        self.requests: list[tuple[str, int]] = []  # (path inside the mounts, status): what the viewer asked for
        self._lock = threading.Lock()
        handler = type("FileHandler", (_FileHandler,), {"files": self, "timeout": timeout})
        try:
            self.httpd = http_server(host, port, handler)
        except OSError as err:
            raise ViewError(f"cannot listen on {host}:{port} ({err.strerror or err})", "choose another --port (0 picks a free one)") from err
        self.host = host.strip("[]")
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="connectile-files", daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/{self.token}" if self.token else f"http://{host}:{self.port}"

    def url(self, mount: str, rel: str = "") -> str:
        """The HTTP URL of ``rel`` inside a mount."""
        return f"{self.base}/{mount}/{rel}".rstrip("/")

    def resolve(self, raw_path: str) -> Path | HTTPStatus:
        """The file a request path names, or the status to answer (400 bad path, 404 not there)."""
        path = raw_path
        for _ in range(3):
            decoded = unquote(path)
            if decoded == path:
                break
            path = decoded
        parts = path.split("/")
        if "\x00" in path or "\\" in path or any(p in ("..", ".") for p in parts):
            return HTTPStatus.BAD_REQUEST
        if any(p in PRIVATE for p in parts):
            return HTTPStatus.NOT_FOUND
        parts = [p for p in parts if p]
        if self.token:
            if not parts or not secrets.compare_digest(parts[0].encode(), self.token.encode()):
                return HTTPStatus.NOT_FOUND
            parts = parts[1:]
        if len(parts) < 2 or parts[0] not in self.mounts:
            return HTTPStatus.NOT_FOUND
        root = self.mounts[parts[0]]
        try:
            target = root.joinpath(*parts[1:]).resolve()  # symlinks followed: where the bytes really are
        except (OSError, RuntimeError):  # a symlink loop
            return HTTPStatus.NOT_FOUND
        if not target.is_relative_to(root) or not target.is_file():  # out of the mount, or a folder (never listed)
            return HTTPStatus.NOT_FOUND
        return target

    def record(self, raw: str, result: Path | HTTPStatus) -> None:
        status = result if isinstance(result, HTTPStatus) else HTTPStatus.OK
        with self._lock:
            self.requests.append((raw, int(status)))
            if len(self.requests) > 10000:
                del self.requests[:5000]

    def serve_forever(self) -> None:
        """Block until interrupted (the server already runs in a thread)."""
        self._thread.join()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
