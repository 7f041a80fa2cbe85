"""The review page's HTTP server: standard-library ``ThreadingHTTPServer``, one token, a small JSON API.

Security model: the server binds 127.0.0.1 by default (``::1`` when asked; both count as loopback, and
on loopback a request must name a loopback Host, against DNS rebinding) and every request must carry
the access token (``?token=`` in the URL, the ``X-Connectile-Token`` header, or the cookie the page
sets); changes (POST) need the token in the URL or header, not only the cookie. The token is compared
in constant time. Static files come from a fixed list, report files only from inside the run directory
(symlinks that lead out of it are refused); any ``..`` segment, backslash or NUL is refused. A POST
body needs one plain decimal Content-Length of at most ``MAX_BODY`` bytes (no sign, no spaces, no
second header, no chunked encoding). A client that stops sending is dropped after ``TIMEOUT`` seconds.
The report page is Markdown rendered without raw HTML and passed through an allow-list
(:mod:`engine.review.sanitise`). Bad JSON, unknown ROIs or wrong types get a 4xx and change nothing.

Routes (all behind the token)::

    GET  /                      the page
    GET  /static/<name>         page assets (app.js, style.css)
    GET  /api/round[?round=]    queries of the round in display order, answers, progress
    GET  /api/rois/<id>.png     one tile: image with the mask overlaid
    POST /api/answer            {"round": "round-01", "roi_id": 7, "accepted": true}
    POST /api/undo              {"round": "round-01"}
    POST /api/finish            {"round": "round-01"}
    GET  /report/[<file>]       the run's report (RUN/report.md rendered) and its images
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import re
import secrets
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from engine.active.answers import AnswerError, round_dirs, round_finished
from engine.review.rounds import ReviewError, ReviewRound, RoiStore, load_round
from engine.review.sanitise import markdown_html
from engine.review.tiles import render_tile
from engine.view.files import http_server, is_loopback

log = logging.getLogger(__name__)

COOKIE = "connectile_token"
HEADER = "X-Connectile-Token"
MAX_BODY = 64 * 1024
TIMEOUT = 30.0  # seconds a client may stay silent before its connection is dropped
TILE_CACHE = 4096
REPORT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
}
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
_ROI_PNG = re.compile(r"^/api/rois/(\d{1,12})\.png$")
_ROUND = re.compile(r"^round-\d{2,}$")
_LENGTH = re.compile(r"^[0-9]{1,12}$")


class HttpError(Exception):
    """An answer other than 200: status and a one-line reason (sent as JSON)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _static_files() -> dict[str, bytes]:
    """The page assets shipped beside this module (engine/review/static)."""
    root = resources.files("engine.review") / "static"
    out: dict[str, bytes] = {}
    for entry in root.iterdir():
        if entry.is_file() and Path(entry.name).suffix in STATIC_TYPES:
            out[entry.name] = entry.read_bytes()
    if "index.html" not in out:
        raise ReviewError("the review page assets (engine/review/static/index.html) are missing", "reinstall connectile")
    return out


class ReviewApp:
    """Everything the handler needs: the run, its ROIs, the open rounds, the token, a tile cache."""

    def __init__(self, run_dir: str | Path, token: str, round_name: str | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        if not self.run_dir.is_dir():
            raise ReviewError(f"run directory {run_dir} does not exist", "give the RUN folder of connectile run / connectile query")
        if round_name is not None and not _ROUND.match(round_name):
            raise ReviewError(f"round {round_name!r} is not a round name", "write it like round-01")
        self.token = token
        self._token_bytes = token.encode()
        self.fixed_round = round_name
        self.rois = RoiStore(self.run_dir)
        self.static = _static_files()
        self._rounds: dict[str, ReviewRound] = {}
        self._lock = threading.Lock()
        self._tiles: OrderedDict[int, bytes] = OrderedDict()
        self.current()  # fail now, not on the first request, when the round cannot be shown

    # -- auth ------------------------------------------------------------------------------------
    def token_ok(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode("utf-8", "replace"), self._token_bytes)

    # -- rounds ----------------------------------------------------------------------------------
    def round(self, name: str) -> ReviewRound:
        if not isinstance(name, str) or not _ROUND.match(name):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"round must be a name like round-01, got {name!r}")
        with self._lock:
            rnd = self._rounds.get(name)
            if rnd is None:
                if (self.run_dir / "rounds" / name) not in round_dirs(self.run_dir):
                    raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown round {name!r}")
                rnd = load_round(self.run_dir, self.rois, name)
                self._rounds[name] = rnd
            return rnd

    def current(self) -> ReviewRound:
        if self.fixed_round is not None:
            if (self.run_dir / "rounds" / self.fixed_round) not in round_dirs(self.run_dir):
                known = ", ".join(p.name for p in round_dirs(self.run_dir)) or "none"
                raise ReviewError(f"{self.run_dir} has no round {self.fixed_round!r} (rounds: {known})", "give one of the rounds listed")
            return self.round(self.fixed_round)
        with self._lock:
            path = None
            for d in reversed(round_dirs(self.run_dir)):
                rnd = self._rounds.get(d.name)
                finished = rnd.store.finished if rnd is not None else round_finished(d)
                if not finished:
                    path = d
                    break
            dirs = round_dirs(self.run_dir)
        if path is None and not dirs:
            raise ReviewError(f"{self.run_dir} has no rounds/round-NN folder", "run connectile query first")
        return self.round((path or dirs[-1]).name)

    def report_path(self) -> Path | None:
        path = self.run_dir / "report.md"
        return path if path.is_file() else None

    def state(self, rnd: ReviewRound) -> dict[str, Any]:
        answers = rnd.store.answers()
        mine = {str(r): a for r, a in answers.items() if r in rnd.roi_ids}
        rounds = [{"name": d.name, "finished": round_finished(d) if d.name != rnd.name else rnd.store.finished} for d in round_dirs(self.run_dir)]
        return {
            "run": self.run_dir.name,
            "round": rnd.name,
            "rounds": rounds,
            "finished": rnd.store.finished,
            "queries": rnd.queries,
            "answers": mine,
            "reviewed": len(mine),
            "total": len(rnd.queries),
            "can_undo": rnd.store.can_undo(),
            "roi_size": int(self.rois.image.shape[-1]),
            "report": self.report_path() is not None or bool(self.report_images()),
        }

    # -- tiles -----------------------------------------------------------------------------------
    def tile(self, roi_id: int) -> bytes:
        with self._lock:
            png = self._tiles.get(roi_id)
            if png is not None:
                self._tiles.move_to_end(roi_id)
                return png
        if not 0 <= roi_id < self.rois.count:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no ROI {roi_id} (the run holds 0..{self.rois.count - 1})")
        png = render_tile(*self.rois.crop(roi_id))
        with self._lock:
            self._tiles[roi_id] = png
            while len(self._tiles) > TILE_CACHE:
                self._tiles.popitem(last=False)
        return png

    # -- report ----------------------------------------------------------------------------------
    def report_images(self, limit: int = 200) -> list[Path]:
        out: list[Path] = []
        for p in sorted(self.run_dir.rglob("*.png")):
            rel = p.relative_to(self.run_dir)
            if any(part.startswith(".") for part in rel.parts) or rel.parts[0] == "rois":
                continue
            out.append(rel)
            if len(out) >= limit:
                break
        return out

    def report_html(self) -> bytes:
        md = self.report_path()
        title = f"Report of {html.escape(self.run_dir.name)}"
        if md is not None:
            text = md.read_text(encoding="utf-8", errors="replace")
            try:
                body = markdown_html(text)
            except ImportError:
                body = f"<pre>{html.escape(text)}</pre>"
        else:
            images = self.report_images()
            if not images:
                body = "<p>This run has no report yet (no report.md and no PNG plots).</p>"
            else:
                items = "".join(
                    f'<figure><img src="{html.escape(p.as_posix())}" alt="{html.escape(p.as_posix())}"><figcaption>{html.escape(p.as_posix())}</figcaption></figure>'
                    for p in images
                )
                body = f"<p>No report.md yet; the plots of the run:</p>{items}"
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><base href="/report/">'
            f'<title>{title}</title><link rel="stylesheet" href="/static/style.css"></head>'
            f'<body class="report"><header><h1>{title}</h1><a id="back" href="/">Back to the review</a></header>'
            f"<main>{body}</main></body></html>"
        )
        return page.encode()

    def report_file(self, rel: str) -> tuple[bytes, str]:
        parts = [p for p in rel.split("/") if p]
        if not parts:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such report file")
        if any(p.startswith(".") for p in parts):
            raise HttpError(HTTPStatus.NOT_FOUND, "no such report file")
        suffix = Path(parts[-1]).suffix.lower()
        if suffix not in REPORT_TYPES:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such report file")
        path = (self.run_dir.joinpath(*parts)).resolve()
        if not path.is_relative_to(self.run_dir) or not path.is_file():
            raise HttpError(HTTPStatus.NOT_FOUND, "no such report file")
        return path.read_bytes(), REPORT_TYPES[suffix]

    def close(self) -> None:
        with self._lock:
            for rnd in self._rounds.values():
                rnd.store.close()
            self._rounds.clear()


def _clean_path(raw: str) -> str:
    """The decoded request path; 400 for NUL, backslashes or ``..`` segments (also when percent-encoded)."""
    path = raw
    for _ in range(3):  # decode nested encodings (%252e%252e) far enough to see what they hide
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    if "\x00" in path or "\\" in path or any(seg in ("..", ".") for seg in path.split("/")):
        raise HttpError(HTTPStatus.BAD_REQUEST, "bad path")
    return unquote(raw)


class _Handler(BaseHTTPRequestHandler):
    server_version = "connectile-review"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    app: ReviewApp  # set on the subclass made per server
    loopback_only: bool = True
    timeout = TIMEOUT  # socket timeout of each connection (StreamRequestHandler applies it)

    # -- plumbing --------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status)

    def _query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query, keep_blank_values=True)

    def _token(self, *, allow_cookie: bool) -> str | None:
        got = self._query().get("token")
        if got:
            return got[0]
        header = self.headers.get(HEADER)
        if header:
            return header
        if allow_cookie:
            for part in (self.headers.get("Cookie") or "").split(";"):
                key, _, value = part.strip().partition("=")
                if key == COOKIE:
                    return value
        return None

    def _authorised(self, *, allow_cookie: bool) -> bool:
        if self.loopback_only:
            host = (self.headers.get("Host") or "").strip()
            name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
            if not is_loopback(name):  # a page on another site reaching us by DNS rebinding
                return False
        return self.app.token_ok(self._token(allow_cookie=allow_cookie))

    def _cookie(self) -> dict[str, str]:
        return {"Set-Cookie": f"{COOKIE}={self.app.token}; Path=/; HttpOnly; SameSite=Strict"}

    def _body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding") is not None:
            raise HttpError(HTTPStatus.BAD_REQUEST, "send the JSON body with a Content-Length, not a Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "a JSON body with Content-Length is needed")
        if len(lengths) > 1 or not _LENGTH.match(lengths[0]):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length must be one decimal number of bytes, got {', '.join(map(repr, lengths))[:80]}")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over {MAX_BODY}")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({err})") from err
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        try:
            if not self._authorised(allow_cookie=method != "POST"):
                if method == "POST":  # do not leave an unread body on a kept-alive connection
                    self.close_connection = True
                self._error(HTTPStatus.FORBIDDEN, "a valid access token is needed (open the URL that connectile review printed)")
                return
            path = _clean_path(urlsplit(self.path).path)
            if method == "POST":
                self._post(path)
            else:
                self._get(path)
        except HttpError as err:
            if method == "POST":
                self.close_connection = True
            self._error(err.status, err.message)
        except (ReviewError, AnswerError) as err:
            self._error(HTTPStatus.CONFLICT if "finished" in str(err) else HTTPStatus.BAD_REQUEST, str(err))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _not_allowed(self) -> None:
        self.close_connection = True
        if not self._authorised(allow_cookie=False):
            self._error(HTTPStatus.FORBIDDEN, "a valid access token is needed")
        else:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    # -- routes ----------------------------------------------------------------------------------
    def _get(self, path: str) -> None:
        app = self.app
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, app.static["index.html"], STATIC_TYPES[".html"], self._cookie())
        elif path.startswith("/static/"):
            name = path[len("/static/") :]
            if name not in app.static:
                raise HttpError(HTTPStatus.NOT_FOUND, "no such file")
            self._send(HTTPStatus.OK, app.static[name], STATIC_TYPES[Path(name).suffix])
        elif path == "/api/round":
            names = self._query().get("round")
            rnd = app.round(names[0]) if names else app.current()
            self._json(app.state(rnd))
        elif m := _ROI_PNG.match(path):
            self._send(HTTPStatus.OK, app.tile(int(m.group(1))), "image/png")
        elif path in ("/report", "/report/"):
            self._send(HTTPStatus.OK, app.report_html(), STATIC_TYPES[".html"], self._cookie())
        elif path.startswith("/report/"):
            body, ctype = app.report_file(path[len("/report/") :])
            self._send(HTTPStatus.OK, body, ctype)
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such page")

    def _post(self, path: str) -> None:
        if path not in ("/api/answer", "/api/undo", "/api/finish"):
            raise HttpError(HTTPStatus.NOT_FOUND, "no such action")
        body = self._body()
        rnd = self.app.round(body.get("round"))  # type: ignore[arg-type]
        extra = set(body) - {"round", "roi_id", "accepted"}
        if extra:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown field(s) {sorted(extra)}")
        out: dict[str, Any] = {}
        if path == "/api/answer":
            roi, accepted = body.get("roi_id"), body.get("accepted")
            if isinstance(roi, bool) or not isinstance(roi, int):
                raise HttpError(HTTPStatus.BAD_REQUEST, f"roi_id must be an integer, got {roi!r}")
            if roi not in rnd.roi_ids:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"ROI {roi} is not a query of {rnd.name}")
            if not isinstance(accepted, bool):
                raise HttpError(HTTPStatus.BAD_REQUEST, f"accepted must be true or false, got {accepted!r}")
            rnd.store.set(roi, accepted, source="person")
            log.info("%s: ROI %d -> %s", rnd.name, roi, accepted)
        elif path == "/api/undo":
            out["undone"] = rnd.store.undo()
        else:
            rnd.store.finish()
            log.info("%s finished", rnd.name)
        self._json({**self.app.state(rnd), **out})


class ReviewServer:
    """The review page for one run directory, served from a background thread or the foreground.

    >>> # server = ReviewServer("RUN"); print(server.url); server.serve_forever()
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        round_name: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.app = ReviewApp(run_dir, token or secrets.token_urlsafe(24), round_name)
        handler = type("ReviewHandler", (_Handler,), {"app": self.app, "loopback_only": is_loopback(host), "timeout": timeout})
        try:
            self.httpd = http_server(host, port, handler)
        except OSError as err:
            self.app.close()
            raise ReviewError(f"cannot listen on {host}:{port} ({err.strerror or err})", "choose another --port (0 picks a free one)") from err
        self.host = host.strip("[]")
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.app.token

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The page's URL with the access token."""
        return f"{self.base}/?token={self.token}"

    def start(self) -> ReviewServer:
        """Serve from a daemon thread (tests, notebooks)."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="connectile-review", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.app.close()

    def __enter__(self) -> ReviewServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def serve_review(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0, round_name: str | None = None) -> ReviewServer:
    """Start the review page in the background and return the server (``.url`` has the token)."""
    return ReviewServer(run_dir, host=host, port=port, round_name=round_name).start()
