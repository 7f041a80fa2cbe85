"""The answer store, the review server (token, traversal, malformed requests) and the page in a real
headless browser (Playwright driving Debian's chromium)."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser.runs import ROUND1_CLUSTERS, ROUND1_ROIS, make_rois, make_run, write_queries

from engine.active.answers import AnswerError, AnswerStore, all_answers, current_round, reviewed_roi_ids
from engine.review import ReviewError, ReviewServer
from engine.review.tiles import FILL_ALPHA, OVERLAY_RGB

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# AnswerStore
# --------------------------------------------------------------------------------------------------
def test_store_set_undo_finish(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    with AnswerStore(path) as store:
        assert store.answers() == {} and not store.finished and store.undo() is None
        store.set(4, True)
        store.set(9, False, source="oracle")
        store.set(4, False)  # a change: undo goes back to True
        store.set(9, False)  # the same value: no undo step, only the source changes
        assert store.answers() == {4: False, 9: False}
        assert store.sources() == {4: "person", 9: "person"}
        assert store.undo() == 4 and store.answers() == {4: True, 9: False}
        assert store.undo() == 9 and store.answers() == {4: True}
        assert store.undo() == 4 and store.answers() == {}
        assert store.undo() is None and not store.can_undo()
        store.set(1, True)
        store.finish()
        assert store.finished
        with pytest.raises(AnswerError, match="finished"):
            store.set(2, True)
        with pytest.raises(AnswerError, match="finished"):
            store.undo()
        assert store.answers() == {1: True}
    with AnswerStore(path) as again:  # reopened: everything is still there
        assert again.finished and again.answers() == {1: True}
        again.reopen()
        again.set(2, False)
        assert again.answers() == {1: True, 2: False}


@pytest.mark.parametrize(
    ("roi", "accepted", "source", "match"),
    [(-1, True, "person", "non-negative"), (True, True, "person", "boolean"), ("3", True, "person", "integer"),
     (3, "yes", "person", "True or False"), (3, 2, "person", "True or False"), (3, True, "robot", "source")],
)
def test_store_rejects_bad_values(tmp_path: Path, roi: Any, accepted: Any, source: Any, match: str) -> None:
    with AnswerStore(tmp_path / "a.sqlite") as store:
        with pytest.raises(AnswerError, match=match):
            store.set(roi, accepted, source=source)
        assert store.answers() == {} and not store.can_undo()


def test_store_schema_is_the_contract(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "a.sqlite"
    AnswerStore(path).close()
    db = sqlite3.connect(path)
    cols = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in ("answers", "history", "meta")}
    assert cols == {
        "answers": ["roi_id", "accepted", "updated_at", "source"],
        "history": ["seq", "roi_id", "previous", "accepted", "at"],
        "meta": ["key", "value"],
    }
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK constraint guards writers that bypass the API
        db.execute("INSERT INTO answers VALUES (1, 2, 0.0, 'person')")
    db.close()


def test_store_survives_a_killed_writer(tmp_path: Path) -> None:
    """A process SIGKILLed right after set() returned loses nothing."""
    path = tmp_path / "answers.sqlite"
    code = textwrap.dedent(
        f"""
        import os, signal
        from engine.active.answers import AnswerStore
        s = AnswerStore({str(path)!r})
        for i in range(5):
            s.set(i, i % 2 == 0)
        s.undo()
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL and "written" in done.stdout
    with AnswerStore(path) as store:
        assert store.answers() == {0: True, 1: False, 2: True, 3: False}
        assert store.undo() == 3


def test_rounds_of_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for r in (1, 2, 3):
        (run / "rounds" / f"round-{r:02d}").mkdir(parents=True)
    (run / "rounds" / "round-x").mkdir()  # ignored: not a round name
    assert current_round(run) == run / "rounds" / "round-03"
    with AnswerStore(run / "rounds" / "round-01" / "answers.sqlite") as s1:
        s1.set(1, True)
        s1.set(2, False)
        s1.finish()
    with AnswerStore(run / "rounds" / "round-03" / "answers.sqlite") as s3:
        s3.set(2, True)
        s3.set(5, True)
        s3.finish()
    assert reviewed_roi_ids(run) == {1, 2, 5}
    assert all_answers(run) == {1: True, 2: True, 5: True}  # the later round wins for ROI 2
    assert current_round(run) == run / "rounds" / "round-02"  # the highest round not finished
    with AnswerStore(run / "rounds" / "round-02" / "answers.sqlite") as s2:
        s2.finish()
    assert current_round(run) == run / "rounds" / "round-03"  # all finished: the last one
    assert current_round(tmp_path / "nothing") is None


# --------------------------------------------------------------------------------------------------
# the server without a browser
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ReviewServer, Path]]:
    run = make_run(tmp_path)
    with ReviewServer(run) as server:
        server.start()
        yield server, run


def _request(
    server: ReviewServer, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _post(server: ReviewServer, path: str, obj: Any, token: str | None = "") -> tuple[int, Any]:
    token = server.token if token == "" else token
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Connectile-Token"] = token
    status, body, _ = _request(server, "POST", path, json.dumps(obj).encode(), headers)
    return status, json.loads(body)


def _store_state(run: Path) -> tuple[dict[int, bool], bool, bool]:
    with AnswerStore(run / "rounds" / "round-01" / "answers.sqlite") as store:
        return store.answers(), store.can_undo(), store.finished


def test_round_state_in_rank_order(served: tuple[ReviewServer, Path]) -> None:
    server, _ = served
    status, body, headers = _request(server, "GET", f"/api/round?token={server.token}")
    assert status == 200 and headers["content-type"] == "application/json"
    state = json.loads(body)
    assert state["round"] == "round-01" and state["total"] == 8 and state["reviewed"] == 0
    assert [q["roi_id"] for q in state["queries"]] == ROUND1_ROIS  # sorted by rank, not file order
    assert [q["cluster"] for q in state["queries"]] == ROUND1_CLUSTERS
    assert state["queries"][4]["score"] is None  # ROI 0 has a NaN score: null in JSON
    assert state["queries"][0]["object_id"] == 107 and not state["finished"]


def test_every_request_needs_the_token(served: tuple[ReviewServer, Path]) -> None:
    server, run = served
    for path in ("/", "/index.html", "/static/app.js", "/api/round", "/api/rois/0.png", "/report/", "/nothing"):
        for suffix in ("", "?token=", "?token=wrong", f"?token={server.token[:-1]}"):
            status, body, _ = _request(server, "GET", path + suffix)
            assert status == 403, (path, suffix, status)
            assert b"function" not in body and b"PNG" not in body
    status, _, _ = _request(server, "GET", "/api/round", headers={"X-Connectile-Token": server.token + "x"})
    assert status == 403
    # the right token from another Host (DNS rebinding) is refused too
    status, _, _ = _request(server, "GET", f"/api/round?token={server.token}", headers={"Host": f"evil.example:{server.port}"})
    assert status == 403
    for status, _ in (_post(server, "/api/answer", {"round": "round-01", "roi_id": 7, "accepted": True}, token=None),
                      _post(server, "/api/answer", {"round": "round-01", "roi_id": 7, "accepted": True}, token="nope"),
                      _post(server, "/api/finish", {"round": "round-01"}, token=None)):
        assert status == 403
    # the cookie set by the page authorises reading, but not changing
    status, _, headers = _request(server, "GET", f"/?token={server.token}")
    assert status == 200 and "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    cookie = headers["set-cookie"].split(";")[0]
    status, _, _ = _request(server, "GET", "/api/round", headers={"Cookie": cookie})
    assert status == 200
    status, _, _ = _request(
        server, "POST", "/api/answer", json.dumps({"round": "round-01", "roi_id": 7, "accepted": True}).encode(),
        {"Cookie": cookie, "Content-Type": "application/json"},
    )
    assert status == 403
    for method in ("PUT", "DELETE"):
        assert _request(server, method, "/api/answer")[0] == 403
        assert _request(server, method, f"/api/answer?token={server.token}")[0] == 405
    assert _store_state(run) == ({}, False, False)


def test_path_traversal_is_refused(served: tuple[ReviewServer, Path], tmp_path: Path) -> None:
    server, run = served
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET-BYTES")
    (run / "notes.png").write_bytes(b"\x89PNG-report-plot")
    t = server.token
    for path in (
        "/static/../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fetc%2fpasswd",
        "/static/%252e%252e%252f%252e%252e%252fetc%252fpasswd",
        "/static/..%5c..%5cetc%5cpasswd",
        "/static/app.js%00.png",
        "/static/style.css/../../../etc/passwd",
        "/static/__init__.py",
        "/static/",
        "/report/../secret.png",
        "/report/%2e%2e/secret.png",
        "/report/..%2fsecret.png",
        "/report/%2fetc%2fpasswd",
        "/report//etc/passwd",
        "/report/rounds/round-01/answers.sqlite",
        "/report/rois/rois.zarr/image/.zarray",
        "/api/rois/../../etc/passwd",
        "/api/rois/99.png",
        "/api/rois/-1.png",
        "/%2e%2e/%2e%2e/etc/passwd",
    ):
        status, body, _ = _request(server, "GET", f"{path}?token={t}")
        assert status in (400, 404), (path, status)
        assert b"SECRET" not in body and b"root:" not in body
    assert _request(server, "GET", f"/report/notes.png?token={t}")[1] == b"\x89PNG-report-plot"  # the control
    assert _request(server, "GET", f"/static/app.js?token={t}")[0] == 200
    assert _store_state(run) == ({}, False, False)


def test_malformed_changes_are_refused(served: tuple[ReviewServer, Path]) -> None:
    server, run = served
    ok = {"round": "round-01", "roi_id": 7, "accepted": True}
    assert _post(server, "/api/answer", ok)[0] == 200
    before = _store_state(run)
    assert before == ({7: True}, True, False)
    bad: list[Any] = [
        {**ok, "roi_id": 1},  # a ROI of the run, but not a query of this round
        {**ok, "roi_id": 999},
        {**ok, "roi_id": "7"},
        {**ok, "roi_id": 7.0},
        {**ok, "roi_id": True},
        {**ok, "accepted": "true"},
        {**ok, "accepted": 1},
        {**ok, "accepted": None},
        {"roi_id": 7, "accepted": False},  # no round
        {**ok, "accepted": False, "round": "round-02"},
        {**ok, "accepted": False, "round": "../round-01"},
        {**ok, "accepted": False, "extra": 1},
        [7, False],
        "7",
    ]
    for obj in bad:
        status, body = _post(server, "/api/answer", obj)
        assert status == 400, (obj, status)
        assert body["error"]
    t = server.token
    for raw in (b"{not json", b"\xff\xfe", b"", b"null"):
        status, _, _ = _request(server, "POST", "/api/answer", raw, {"X-Connectile-Token": t, "Content-Type": "application/json"})
        assert status == 400, raw
    # no Content-Length, a lying one, one over the limit, an unknown action
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/api/answer")
    conn.putheader("X-Connectile-Token", t)
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    status, _, _ = _request(server, "POST", "/api/answer", b"x" * 10, {"X-Connectile-Token": t, "Content-Length": "abc"})
    assert status == 400
    status, _, _ = _request(server, "POST", "/api/answer", b"x" * (70 * 1024), {"X-Connectile-Token": t})
    assert status == 413
    assert _post(server, "/api/delete", {"round": "round-01"})[0] == 404
    assert _request(server, "GET", f"/api/round?round=round-07&token={t}")[0] == 400
    assert _store_state(run) == before


def _raw(port: int, data: bytes, host: str = "127.0.0.1", wait: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it (or ``wait`` runs out)."""
    import socket

    with socket.create_connection((host, port), timeout=wait) as sock:
        sock.sendall(data)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


@pytest.mark.parametrize(
    "lengths",
    [["-1"], ["+5"], ["5.0"], ["0x10"], ["1e3"], ["\u00b2"], ["5", "5"], ["5", "7"], ["1234567890123"]],
    ids=["negative", "plus", "float", "hex", "exp", "superscript-two", "twice", "conflicting", "13-digits"],
)
def test_content_length_is_parsed_strictly(served: tuple[ReviewServer, Path], lengths: list[str]) -> None:
    """Anything but one plain decimal Content-Length is 400 (a superscript digit passes str.isdigit and
    used to crash the handler); the connection is closed, nothing changes, the server keeps serving."""
    server, run = served
    body = json.dumps({"round": "round-01", "roi_id": 7, "accepted": True}).encode()
    head = "".join(f"Content-Length: {v}\r\n" for v in lengths)
    request = f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Connectile-Token: {server.token}\r\n{head}\r\n".encode("latin-1") + body
    reply = _raw(server.port, request)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"Content-Length must be one decimal number" in reply
    assert _store_state(run) == ({}, False, False)
    assert _post(server, "/api/answer", {"round": "round-01", "roi_id": 7, "accepted": True})[0] == 200  # still serving


def test_oversized_and_chunked_bodies_are_refused(served: tuple[ReviewServer, Path]) -> None:
    server, run = served
    t = server.token
    for head, want in ((f"Content-Length: {64 * 1024 + 1}", b"413"), ("Content-Length: 999999999999", b"413"),
                       ("Transfer-Encoding: chunked", b"400"), ("Transfer-Encoding: chunked\r\nContent-Length: 5", b"400")):
        request = f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Connectile-Token: {t}\r\n{head}\r\n\r\n".encode()
        reply = _raw(server.port, request + b"5\r\n{}\r\n0\r\n\r\n")
        assert reply.split(b" ")[1] == want, (head, reply[:200])
    assert _store_state(run) == ({}, False, False)


def test_silent_clients_are_dropped(tmp_path: Path) -> None:
    """A client that stops half-way (in the headers, or in a body shorter than its Content-Length) is
    disconnected after the socket timeout instead of holding a thread forever; nothing is recorded."""
    import time

    run = make_run(tmp_path)
    with ReviewServer(run, timeout=0.5) as server:
        server.start()
        t = server.token
        for partial in (b"GET /api/round HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                        f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Connectile-Token: {t}\r\nContent-Length: 60\r\n\r\n"
                        '{{"round": "round-01", '.encode()):
            start = time.monotonic()
            reply = _raw(server.port, partial, wait=20.0)  # a server without a timeout never closes: recv times out
            assert reply == b"" and time.monotonic() - start < 15, reply[:200]
        assert _request(server, "GET", f"/api/round?token={t}")[0] == 200
    assert _store_state(run) == ({}, False, False)


def test_ipv6_loopback(tmp_path: Path) -> None:
    """``--host ::1`` serves on the IPv6 loopback and counts as loopback (the Host check accepts
    ``[::1]:port`` and still refuses other names)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    run = make_run(tmp_path)
    with ReviewServer(run, host="::1") as server:
        server.start()
        assert server.url.startswith(f"http://[::1]:{server.port}/?token=")
        conn = http.client.HTTPConnection("::1", server.port, timeout=10)
        try:
            conn.request("GET", f"/api/round?token={server.token}")  # Host: [::1]:port
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["total"] == 8
            conn.request("GET", f"/api/round?token={server.token}", headers={"Host": f"evil.example:{server.port}"})
            resp = conn.getresponse()
            assert resp.status == 403
            resp.read()
        finally:
            conn.close()
        assert _raw(server.port, b"GET / HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n", host="::1").startswith(b"HTTP/1.1 403")  # no token
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()  # not on IPv4


def test_report_page_is_sanitised(tmp_path: Path) -> None:
    """Markup in report.md (scripts, event handlers, javascript: links, also entity-encoded) is shown as
    text or dropped; the Markdown itself (headings, tables, images, http links) still renders."""
    from html.parser import HTMLParser

    run = make_run(tmp_path)
    (run / "plots").mkdir()
    (run / "plots" / "curve.png").write_bytes(b"\x89PNG-curve")
    (run / "report.md").write_text(
        "# Report <script>alert('title')</script>\n\n"
        "<img src=x onerror=alert(1)>\n\n"
        "<iframe src=https://evil.example></iframe>\n\n"
        "[js](javascript:alert(2)) [js2](&#106;avascript:alert(3)) [js3](JaVa\tScRiPt:alert(4)) ![img](javascript:alert(5))\n\n"
        "[data](data:text/html;base64,PHNjcmlwdD4=) [ok](https://example.org/a?b=1&c=2) ![curve](plots/curve.png)\n\n"
        "<a href=\"javascript:alert(6)\" onclick=\"alert(7)\">raw link</a>\n\n"
        "| a | b |\n|:--|--:|\n| <b onmouseover=alert(8)>1</b> | 2 |\n"
    )

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[tuple[str, dict[str, str | None]]] = []
            self.text = ""

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.append((tag, dict(attrs)))

        def handle_data(self, data: str) -> None:
            self.text += data

    with ReviewServer(run) as server:
        server.start()
        status, body, headers = _request(server, "GET", f"/report/?token={server.token}")
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
    page = Tags()
    page.feed(body.decode())
    main = page.tags[[t for t, _ in page.tags].index("main"):]
    assert not [t for t, _ in main if t in ("script", "iframe", "style", "object", "embed")], main
    assert not [(t, a) for t, a in main if any(k.startswith("on") for k in a)], main
    urls = [a[k] or "" for _, a in main for k in ("href", "src") if k in a]
    assert urls == ["https://example.org/a?b=1&c=2", "plots/curve.png"], urls
    assert "<script>alert('title')</script>" in page.text and "<img src=x onerror=alert(1)>" in page.text  # shown as text
    assert ("th", {"style": "text-align: left;"}) in main and ("img", {"alt": "curve", "src": "plots/curve.png"}) in main


def test_answer_undo_finish_over_http(served: tuple[ReviewServer, Path]) -> None:
    server, run = served
    status, state = _post(server, "/api/answer", {"round": "round-01", "roi_id": 2, "accepted": False})
    assert status == 200 and state["answers"] == {"2": False} and state["reviewed"] == 1 and state["can_undo"]
    status, state = _post(server, "/api/undo", {"round": "round-01"})
    assert status == 200 and state["undone"] == 2 and state["answers"] == {}
    status, state = _post(server, "/api/undo", {"round": "round-01"})
    assert status == 200 and state["undone"] is None
    _post(server, "/api/answer", {"round": "round-01", "roi_id": 2, "accepted": True})
    status, state = _post(server, "/api/finish", {"round": "round-01"})
    assert status == 200 and state["finished"]
    status, state = _post(server, "/api/answer", {"round": "round-01", "roi_id": 9, "accepted": True})
    assert status == 409 and "finished" in state["error"]
    assert _post(server, "/api/undo", {"round": "round-01"})[0] == 409
    assert _store_state(run) == ({2: True}, True, True)


def test_tile_png_overlays_the_mask(served: tuple[ReviewServer, Path], tmp_path: Path) -> None:
    from PIL import Image

    server, _run = served
    image, mask = make_rois(tmp_path / "copy")  # the same seed: the same crops as the served run
    status, body, headers = _request(server, "GET", f"/api/rois/5.png?token={server.token}")
    assert status == 200 and headers["content-type"] == "image/png"
    rgb = np.asarray(Image.open(io.BytesIO(body)))
    assert rgb.shape == (32, 32, 3)
    outside = mask[5] == 0
    assert (rgb[outside] == image[5][outside][:, None]).all()  # grey, untouched
    inside = mask[5] > 0
    tinted = np.rint((1 - FILL_ALPHA) * image[5].astype(np.float32)[..., None] + FILL_ALPHA * np.asarray(OVERLAY_RGB, np.float32))
    edge = (rgb == OVERLAY_RGB).all(axis=2)
    assert edge.sum() > 0 and (edge <= inside).all()  # the outline lies on the mask
    assert (rgb[inside & ~edge] == tinted[inside & ~edge]).all()


def test_current_round_and_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_queries(run, 2, [1, 6, 8], [0, 0, 1])
    with AnswerStore(run / "rounds" / "round-02" / "answers.sqlite") as s:
        s.finish()
    (run / "plots").mkdir()
    (run / "plots" / "curve.png").write_bytes(b"\x89PNG-curve")
    (run / "report.md").write_text("# Run report\n\n![learning curve](plots/curve.png)\n\n| round | IoU |\n|---|---|\n| 1 | 0.5 |\n")
    with ReviewServer(run) as server:
        server.start()
        state = json.loads(_request(server, "GET", f"/api/round?token={server.token}")[1])
        assert state["round"] == "round-01"  # round-02 is finished, round-01 is not
        assert [r["name"] for r in state["rounds"]] == ["round-01", "round-02"] and state["report"]
        status, body, _ = _request(server, "GET", f"/report/?token={server.token}")
        assert status == 200 and b'<img alt="learning curve" src="plots/curve.png"' in body and b"<table>" in body
        assert _request(server, "GET", f"/report/plots/curve.png?token={server.token}")[1] == b"\x89PNG-curve"
    with ReviewServer(run, round_name="round-02") as server:
        assert server.app.current().name == "round-02"


def test_bad_runs_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReviewError, match="does not exist"):
        ReviewServer(tmp_path / "missing")
    run = tmp_path / "run"
    make_rois(run)
    with pytest.raises(ReviewError, match="no rounds"):
        ReviewServer(run)
    write_queries(run, 1, [1, 40], [0, 0])
    with pytest.raises(ReviewError, match="40"):
        ReviewServer(run)
    write_queries(run, 1, [1, 2], [0, 0])
    with pytest.raises(ReviewError, match="no round 'round-03'"):
        ReviewServer(run, round_name="round-03")
    (run / "rounds" / "round-01" / "queries.parquet").write_text("not parquet")
    with pytest.raises(ReviewError, match="not a readable Parquet"):
        ReviewServer(run)


def test_cli_serves_and_stops(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "review", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert "round-01" in lines[0] and "8 queries" in lines[0], lines
        url = lines[1].split()[-1]
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
        port, token = int(url.split(":")[2].split("/")[0]), url.split("token=")[1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/api/round?token={token}")
        assert json.loads(conn.getresponse().read())["total"] == 8
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_cli_bad_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["review", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


# --------------------------------------------------------------------------------------------------
# the page in a real browser
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from browser.chromium import launched

    with launched() as b:
        yield b


def _open(browser: Any, server: ReviewServer) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    page.wait_for_selector(".tile")
    page.wait_for_function("() => document.querySelectorAll('.tile img').length > 0 && [...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth > 0)")
    page.errors = errors
    return page


def _progress(page: Any, n: int, total: int = 8) -> None:
    page.wait_for_function(f"() => document.getElementById('progress').textContent === '{n} / {total} reviewed'", timeout=5000)


def _answers_on_page(page: Any) -> dict[int, str]:
    return {int(k): v for k, v in page.eval_on_selector_all(".tile", "ts => ts.map(t => [t.dataset.roi, t.dataset.answer])")}


def test_page_shows_tiles_grouped_by_cluster(browser: Any, served: tuple[ReviewServer, Path]) -> None:
    server, _ = served
    page = _open(browser, server)
    assert page.eval_on_selector_all(".tile", "ts => ts.map(t => Number(t.dataset.roi))") == ROUND1_ROIS
    assert page.eval_on_selector_all("section.cluster", "ss => ss.map(s => Number(s.dataset.cluster))") == [2, 0, 1]
    assert page.eval_on_selector_all("section.cluster h2", "hs => hs.map(h => h.textContent)") == [
        "Cluster 2 (3 ROIs)", "Cluster 0 (2 ROIs)", "Cluster 1 (3 ROIs)"]
    assert page.eval_on_selector_all(".tile img", "is => is.map(i => i.naturalWidth)") == [32] * 8
    assert page.text_content("#progress") == "0 / 8 reviewed"
    assert page.is_hidden("#report") and page.is_disabled("#undo") and page.errors == []
    page.close()


def test_page_toggles_by_mouse_and_keyboard_and_persists(browser: Any, served: tuple[ReviewServer, Path]) -> None:
    server, run = served
    page = _open(browser, server)
    tiles = page.locator(".tile")
    tiles.nth(0).click()  # ROI 7: none -> True
    _progress(page, 1)
    tiles.nth(0).click()  # True -> False
    page.wait_for_function("() => document.querySelector('.tile[data-roi=\"7\"]').dataset.answer === 'false'")
    page.keyboard.press("j")  # focus ROI 2
    page.keyboard.press("t")  # ROI 2 True, focus ROI 9
    _progress(page, 2)
    page.keyboard.press("n")  # ROI 9 False, focus ROI 4
    _progress(page, 3)
    page.keyboard.press("ArrowRight")  # focus ROI 0
    page.keyboard.press("Space")  # ROI 0: none -> True
    _progress(page, 4)
    page.keyboard.press("Space")  # ROI 0: True -> False
    page.wait_for_function("() => document.querySelector('.tile[data-roi=\"0\"]').dataset.answer === 'false'")
    page.keyboard.press("ArrowLeft")  # focus ROI 4
    page.keyboard.press("y")  # ROI 4 True
    _progress(page, 5)
    page.keyboard.press("u")  # undo: ROI 4 back to unanswered
    _progress(page, 4)
    page.click("#undo")  # undo: ROI 0 back to True
    page.wait_for_function("() => document.querySelector('.tile[data-roi=\"0\"]').dataset.answer === 'true'")
    expected = {7: False, 2: True, 9: False, 0: True}
    assert _store_state(run)[0] == expected  # on disk, through the store the next round reads
    assert page.text_content("#status") == "saved"
    page.reload()
    page.wait_for_selector(".tile")
    _progress(page, 4)
    shown = _answers_on_page(page)
    assert {r: a for r, a in shown.items() if a != "none"} == {r: str(a).lower() for r, a in expected.items()}
    assert page.get_attribute('.tile[data-roi="2"]', "class") == "tile yes"
    assert page.errors == []
    page.close()


def test_page_finishes_a_round(browser: Any, served: tuple[ReviewServer, Path]) -> None:
    server, run = served
    page = _open(browser, server)
    page.keyboard.press("t")
    _progress(page, 1)
    page.once("dialog", lambda d: d.dismiss())  # 7 not reviewed: asks, and "cancel" keeps the round open
    page.click("#finish")
    page.wait_for_timeout(200)
    assert _store_state(run)[2] is False
    for _ in range(7):
        page.keyboard.press("f")
    _progress(page, 8)
    page.click("#finish")  # all reviewed: no question
    page.wait_for_function("() => document.body.dataset.finished === 'true'")
    assert page.is_visible("#finished-banner") and page.is_disabled("#finish") and page.is_disabled("#undo")
    answers, _, finished = _store_state(run)
    assert finished and answers == {7: True, **{r: False for r in ROUND1_ROIS[1:]}}
    page.locator(".tile").nth(0).click()  # a finished round does not change
    page.keyboard.press("u")
    page.wait_for_timeout(200)
    assert _store_state(run)[0] == answers
    page.reload()
    page.wait_for_function("() => document.body.dataset.finished === 'true'")
    assert page.errors == []
    page.close()


def test_page_links_the_report(browser: Any, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "report.md").write_text("# Report\n\nmetrics per round\n")
    with ReviewServer(run) as server:
        server.start()
        page = _open(browser, server)
        assert page.is_visible("#report")
        page.click("#report")
        page.wait_for_selector("body.report h1")
        assert "metrics per round" in page.text_content("main")
        page.click("#back")  # back to the page, authorised by the cookie
        page.wait_for_selector(".tile")
        page.close()


def test_stop_and_come_back(tmp_path: Path) -> None:
    """Answers, undo history and progress survive a restart of the server (a new token, the same run)."""
    run = make_run(tmp_path)
    with ReviewServer(run) as first:
        first.start()
        for roi, ok in ((7, True), (2, False), (9, True)):
            assert _post(first, "/api/answer", {"round": "round-01", "roi_id": roi, "accepted": ok})[0] == 200
        old_token = first.token
    with ReviewServer(run) as second:
        second.start()
        assert second.token != old_token
        assert _request(second, "GET", f"/api/round?token={old_token}")[0] == 403
        state = json.loads(_request(second, "GET", f"/api/round?token={second.token}")[1])
        assert state["answers"] == {"7": True, "2": False, "9": True} and state["reviewed"] == 3 and state["can_undo"]
        status, state = _post(second, "/api/undo", {"round": "round-01"})
        assert status == 200 and state["undone"] == 9 and state["reviewed"] == 2
