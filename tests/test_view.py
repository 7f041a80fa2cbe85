"""Neuroglancer views: the state built from a run directory, the CORS file server (read through
TensorStore's http kvstore), the link, and the state opened by the real neuroglancer client in chromium."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
import tensorstore as ts
from browser.runs import make_rois, write_queries

from engine.active.answers import AnswerStore
from engine.geometry import Box
from engine.ops.downsample import build_pyramid
from engine.storage import create_volume
from engine.view import FileServer, ViewError, discover_run, neuroglancer_link, serve_view

SHAPE = (8, 64, 64)
VOXEL = (40.0, 4.0, 4.0)


def _write(path: Path, data: np.ndarray, chunks: tuple[int, int, int] = (4, 32, 32), fmt: str = "zarr") -> str:
    vol = create_volume(path, data.shape, data.dtype, chunks, voxel_size=VOXEL, format=fmt)  # type: ignore[arg-type]
    vol.write(Box.from_shape(data.shape[-3:]), data)
    return vol.url


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with raw (and its pyramid), a prediction, a segmentation, a selection and two rounds of ROIs."""
    root = tmp_path_factory.mktemp("view") / "run"
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    _write(root / "data.zarr" / "raw", raw)
    build_pyramid(root / "data.zarr" / "raw", min_size=16, progress=False)
    _write(root / "pred.zarr" / "mito_prob", rng.integers(0, 256, SHAPE, dtype=np.uint8))
    seg = np.zeros(SHAPE, np.uint64)
    seg[2:6, 10:30, 10:30] = 5
    seg[1:4, 40:60, 35:50] = 2**40
    _write(root / "seg.zarr" / "cc", seg, fmt="zarr3")
    (root / "select").mkdir()
    (root / "select" / "selection.json").write_text(
        json.dumps({"method": "coverage", "seed": 0, "boxes": [{"start": [0, 0, 0], "stop": [4, 32, 32]}, {"start": [4, 32, 32], "stop": [8, 64, 64]}]})
    )
    make_rois(root, n=6, size=16)
    write_queries(root, 1, [3, 1], [0, 1])
    write_queries(root, 2, [5], [0])
    with AnswerStore(root / "rounds" / "round-01" / "answers.sqlite") as s:
        s.set(3, True)
        s.set(1, False)
        s.finish()
    return root


@pytest.fixture(scope="module")
def served(run: Path) -> Iterator[tuple[FileServer, dict[str, Any]]]:
    view = discover_run(run)
    server, state = serve_view(view)
    yield server, state
    server.close()


def test_discover_finds_volumes_selection_and_rois(run: Path) -> None:
    view = discover_run(run)
    assert [(layer.kind, layer.name) for layer in view.layers] == [("image", "raw"), ("prediction", "mito_prob"), ("segmentation", "cc")]
    raw = view.layers[0]
    assert raw.pyramid is not None and raw.pyramid.endswith("data.zarr/raw_pyramid") and raw.levels == ["s0", "s1", "s2"]
    assert view.layers[1].pyramid is None and view.layers[2].format == "zarr3"
    assert view.selection_file == run / "select" / "selection.json" and len(view.boxes) == 2
    assert [(p["roi_id"], p["cluster"], p["round"], p["answer"]) for p in view.points] == [(1, 1, "round-01", 0), (3, 0, "round-01", 1), (5, 0, "round-02", -1)]


def test_state_structure(run: Path, served: tuple[FileServer, dict[str, Any]]) -> None:
    server, state = served
    base = f"http://127.0.0.1:{server.port}/{server.token}"
    assert state["dimensions"] == {"x": [4e-9, "m"], "y": [4e-9, "m"], "z": [4e-8, "m"]}
    assert state["position"] == [32.0, 32.0, 4.0]  # x, y, z: the centre of the raw volume
    layers = {layer["name"]: layer for layer in state["layers"]}
    assert list(layers) == ["raw", "mito_prob", "cc", "selected sub-volumes", "queried ROIs"]
    # the pyramid group, read by neuroglancer through its OME-Zarr metadata: no transform needed
    assert layers["raw"]["type"] == "image" and layers["raw"]["source"] == {"url": f"zarr2://{base}/m0/raw_pyramid"}
    pred = layers["mito_prob"]["source"]
    assert pred["url"] == f"zarr2://{base}/m1/mito_prob" and "#uicontrol invlerp" in layers["mito_prob"]["shader"]
    assert pred["transform"]["outputDimensions"] == {"z": [4e-8, "m"], "y": [4e-9, "m"], "x": [4e-9, "m"]}
    assert pred["transform"]["matrix"] == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    assert layers["cc"]["type"] == "segmentation" and layers["cc"]["source"]["url"] == f"zarr3://{base}/m2/cc"
    boxes = layers["selected sub-volumes"]
    assert boxes["type"] == "annotation" and boxes["source"]["url"] == "local://annotations"
    assert [(a["type"], a["pointA"], a["pointB"]) for a in boxes["annotations"]] == [
        ("axis_aligned_bounding_box", [0.0, 0.0, 0.0], [4.0, 32.0, 32.0]),
        ("axis_aligned_bounding_box", [4.0, 32.0, 32.0], [8.0, 64.0, 64.0]),
    ]
    points = layers["queried ROIs"]
    index = __import__("pyarrow.parquet", fromlist=["x"]).read_table(run / "rois" / "index.parquet").to_pydict()
    for a in points["annotations"]:
        rid = a["props"][0]
        assert a["type"] == "point" and a["point"] == [index["z"][rid] + 0.5, index["y"][rid] + 0.5, index["x"][rid] + 0.5]
    assert [a["props"] for a in points["annotations"]] == [[1, 1, 0], [3, 0, 1], [5, 0, -1]]
    assert [p["id"] for p in points["annotationProperties"]] == ["roi_id", "cluster", "answer"]
    link = neuroglancer_link(state)
    assert link.startswith("https://neuroglancer-demo.appspot.com/#!")
    assert json.loads(unquote(link.split("#!", 1)[1])) == state


def test_state_parses_in_neuroglancer_python(served: tuple[FileServer, dict[str, Any]]) -> None:
    from browser.chromium import neuroglancer

    ng = neuroglancer()
    _, state = served
    parsed = ng.ViewerState(json.loads(json.dumps(state)))
    assert [layer.name for layer in parsed.layers] == ["raw", "mito_prob", "cc", "selected sub-volumes", "queried ROIs"]
    assert [type(layer.layer).__name__ for layer in parsed.layers] == ["ImageLayer", "ImageLayer", "SegmentationLayer", "AnnotationLayer", "AnnotationLayer"]
    boxes = parsed.layers["selected sub-volumes"].annotations
    assert type(boxes[0]).__name__ == "AxisAlignedBoundingBoxAnnotation" and list(boxes[1].point_b) == [8, 64, 64]
    pts = parsed.layers["queried ROIs"]
    assert list(pts.annotations[0].props) == [1, 1, 0] and list(pts.source[0].transform.output_dimensions.names) == ["z", "y", "x"]
    assert pts.source[0].url == "local://annotations" and list(parsed.layers["mito_prob"].source[0].transform.output_dimensions.scales) == [4e-8, 4e-9, 4e-9]
    assert ng.ViewerState(parsed.to_json()).to_json() == parsed.to_json()


def _get(server: FileServer, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def test_file_server_cors_and_ranges(run: Path, served: tuple[FileServer, dict[str, Any]]) -> None:
    server, _ = served
    t = server.token
    zarray = (run / "pred.zarr" / "mito_prob" / ".zarray").read_bytes()
    status, body, headers = _get(server, f"/{t}/m1/mito_prob/.zarray", {"Origin": "https://neuroglancer-demo.appspot.com"})
    assert status == 200 and body == zarray and headers["access-control-allow-origin"] == "*" and headers["accept-ranges"] == "bytes"
    status, body, headers = _get(server, f"/{t}/m1/mito_prob/.zarray", {"Range": "bytes=2-9"})
    assert status == 206 and body == zarray[2:10] and headers["content-range"] == f"bytes 2-9/{len(zarray)}"
    status, body, headers = _get(server, f"/{t}/m1/mito_prob/.zarray", {"Range": "bytes=-5"})
    assert status == 206 and body == zarray[-5:]
    status, body, headers = _get(server, f"/{t}/m1/mito_prob/.zarray", {"Range": "bytes=10-"})
    assert status == 206 and body == zarray[10:]
    assert _get(server, f"/{t}/m1/mito_prob/.zarray", {"Range": f"bytes={len(zarray) + 5}-"})[0] == 416
    assert _get(server, f"/{t}/m1/mito_prob/.zarray", {"Range": "lines=1-2"})[0] == 416
    status, _, headers = _get(server, f"/{t}/m1/mito_prob/.zarray", {"Origin": "https://x", "Access-Control-Request-Method": "GET",
                                                                      "Access-Control-Request-Private-Network": "true"}, method="OPTIONS")
    assert status == 204 and headers["access-control-allow-private-network"] == "true" and "Range" in headers["access-control-allow-headers"]
    status, body, headers = _get(server, f"/{t}/m1/mito_prob/.zarray", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(zarray)
    # without the token, outside the mounts, traversal: nothing
    for path in ("/m1/mito_prob/.zarray", "/wrong/m1/mito_prob/.zarray", f"/{t}/m9/x", f"/{t}/m1/missing/0.0.0", f"/{t}/m1"):
        assert _get(server, path)[0] == 404, path
    for path in (f"/{t}/m1/../pred.zarr/mito_prob/.zarray", f"/{t}/m1/%2e%2e/%2e%2e/etc/passwd", f"/{t}/m1/..%2f..%2fetc%2fpasswd", f"/{t}/m1/a%5c..%5cb"):
        assert _get(server, path)[0] == 400, path
    assert _get(server, f"/{t}/m1/mito_prob/.zarray", method="PUT")[0] == 405


def test_file_server_keeps_to_its_folder(tmp_path: Path) -> None:
    """Symlinks are followed only while they stay inside the mounted folder; a symlink out of it (to a
    file or a folder), a symlink loop, a folder (never listed) and the run's .state are 404."""
    served, outside = tmp_path / "served", tmp_path / "outside"
    (served / "sub").mkdir(parents=True)
    outside.mkdir()
    (served / "a.bin").write_bytes(b"INSIDE")
    (served / "sub" / "b.bin").write_bytes(b"B")
    (served / ".state").mkdir()
    (served / ".state" / "view-token").write_text("x" * 22)
    (outside / "secret.txt").write_bytes(b"SECRET")
    (served / "inside-link").symlink_to(served / "a.bin")
    (served / "out-file").symlink_to(outside / "secret.txt")
    (served / "out-dir").symlink_to(outside, target_is_directory=True)
    (served / "sub" / "up").symlink_to("../../outside/secret.txt")
    (served / "loop").symlink_to(served / "loop")
    with FileServer({"m0": served}) as server:
        t = server.token
        assert _get(server, f"/{t}/m0/inside-link")[:2] == (200, b"INSIDE")  # the control
        assert _get(server, f"/{t}/m0/sub/b.bin")[:2] == (200, b"B")
        for path in ("out-file", "out-dir/secret.txt", "sub/up", "loop", "loop/x", "sub", "sub/", "", ".state/view-token", "sub/%2Estate"):
            status, body, _ = _get(server, f"/{t}/m0/{path}")
            assert status == 404 and b"SECRET" not in body and b"b.bin" not in body, (path, status, body)
        assert _get(server, f"/{t}/m0/a.bin")[1] == b"INSIDE"  # still serving after the loop


def test_file_server_drops_silent_clients_and_serves_ipv6(tmp_path: Path) -> None:
    import socket
    import time

    (tmp_path / "a.bin").write_bytes(b"A")
    with FileServer({"m0": tmp_path}, timeout=0.5) as server, socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        start = time.monotonic()
        sock.sendall(f"GET /{server.token}/m0/a.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())  # never finished
        assert sock.recv(100) == b"" and time.monotonic() - start < 15  # closed by the server, not our timeout
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with FileServer({"m0": tmp_path}, host="::1") as server:
        assert server.url("m0", "a.bin").startswith(f"http://[::1]:{server.port}/{server.token}/m0/")
        conn = http.client.HTTPConnection("::1", server.port, timeout=10)
        conn.request("GET", f"/{server.token}/m0/a.bin")
        assert conn.getresponse().read() == b"A"
        conn.close()


def test_run_folder_is_served_with_its_kept_token(run: Path, served: tuple[FileServer, dict[str, Any]]) -> None:
    """``connectile view RUN`` mounts the run folder as ``run`` behind the token kept in RUN/.state, so
    the report's link (engine.view.served_run_url) reads from it; the token file itself is not served."""
    import stat

    from engine.view import run_token, served_run_url

    server, _ = served
    token_file = run / ".state" / "view-token"
    assert server.token == run_token(run) == token_file.read_text().strip() and len(server.token) >= 16
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    base = served_run_url(f"http://127.0.0.1:{server.port}", run)
    assert base == f"http://127.0.0.1:{server.port}/{server.token}/run"
    zarray = (run / "pred.zarr" / "mito_prob" / ".zarray").read_bytes()
    assert _get(server, base.split(str(server.port), 1)[1] + "/pred.zarr/mito_prob/.zarray")[:2] == (200, zarray)
    assert _get(server, f"/{server.token}/run/.state/view-token")[0] == 404
    assert _get(server, f"/{'A' * len(server.token)}/run/pred.zarr/mito_prob/.zarray")[0] == 404
    other = run.parent / "other-run"
    other.mkdir(exist_ok=True)
    assert run_token(other) != server.token  # one token per run folder


def test_served_stores_read_back_through_http(run: Path, served: tuple[FileServer, dict[str, Any]]) -> None:
    """A real zarr reader (TensorStore's http kvstore) reads every served layer back, equal to the disk."""
    server, _ = served
    base = f"http://127.0.0.1:{server.port}/{server.token}"
    for driver, rel, disk in (("zarr", "m1/mito_prob", run / "pred.zarr" / "mito_prob"), ("zarr3", "m2/cc", run / "seg.zarr" / "cc"),
                              ("zarr", "m0/raw_pyramid/s2", run / "data.zarr" / "raw_pyramid" / "s2")):
        over_http = ts.open({"driver": driver, "kvstore": f"{base}/{rel}/"}, read=True).result().read().result()
        local = ts.open({"driver": driver, "kvstore": {"driver": "file", "path": str(disk) + "/"}}, read=True).result().read().result()
        np.testing.assert_array_equal(np.asarray(over_http), np.asarray(local))
    meta = json.loads(_get(server, f"/{server.token}/m0/raw_pyramid/.zattrs")[1])
    assert [d["path"] for d in meta["multiscales"][0]["datasets"]] == ["s0", "s1", "s2"]


def test_explicit_volumes_and_bad_input(run: Path, tmp_path: Path) -> None:
    view = discover_run(tmp_path, raw=str(run / "pred.zarr" / "mito_prob"), segmentations=[str(run / "seg.zarr" / "cc")])
    assert [(layer.kind, layer.name) for layer in view.layers] == [("image", "mito_prob"), ("segmentation", "cc")] and view.points == []
    with pytest.raises(ViewError, match="does not exist"):
        discover_run(tmp_path / "nope")
    with pytest.raises(ViewError, match="selection file"):
        discover_run(run, selection=tmp_path / "missing.json")
    (tmp_path / "sel.json").write_text(json.dumps([{"start": [0, 0], "stop": [1, 1]}]))
    with pytest.raises(ViewError, match="box 0"):
        discover_run(run, selection=tmp_path / "sel.json")


def test_cli_prints_the_link(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["view", str(run), "--once", "--state-out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "image        raw" in out and "(pyramid" in out and "2 selected sub-volumes, 3 queried ROIs" in out
    link = next(line for line in out.splitlines() if line.startswith("https://neuroglancer-demo.appspot.com/#!"))
    assert json.loads(unquote(link.split("#!", 1)[1])) == json.loads((tmp_path / "s.json").read_text())
    assert main(["view", str(tmp_path / "empty-run-that-is-missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty"), "--once"]) == 2
    assert "found no zarr" in capsys.readouterr().err


def test_neuroglancer_client_loads_the_view(served: tuple[FileServer, dict[str, Any]]) -> None:
    """The real neuroglancer client (the one shipped in the neuroglancer package) opens the state in
    chromium and reads every layer from the file server, cross-origin."""
    from browser.chromium import launched, neuroglancer

    ng = neuroglancer()
    server, state = served
    server.requests.clear()
    ng.set_server_bind_address("127.0.0.1")
    viewer = ng.Viewer()
    viewer.set_state(ng.ViewerState(state))
    try:
        with launched() as browser:
            page = browser.new_page()
            page.goto(viewer.get_viewer_url())
            page.wait_for_function(
                "() => window.viewer && window.viewer.layerManager.managedLayers.length === 5 && window.viewer.layerManager.managedLayers"
                ".every(l => l.layer && l.layer.dataSources.every(d => d.loadState !== undefined))",
                timeout=20000,
            )
            load = page.evaluate(
                "() => window.viewer.layerManager.managedLayers.map(l => [l.name, l.layer.dataSources.map(d => "
                "d.loadState.error !== undefined ? 'error: ' + d.loadState.error.message : 'ok')])"
            )
            assert load == [[name, ["ok"]] for name in ("raw", "mito_prob", "cc", "selected sub-volumes", "queried ROIs")]
            parsed = page.evaluate("() => window.viewer.state.toJSON().layers.map(l => (l.annotations || []).length)")
            assert parsed == [0, 0, 0, 2, 3]
            want = ("/m0/raw_pyramid/s0/", "/m0/raw_pyramid/s2/", "/m1/mito_prob/", "/m2/cc/c/")
            for _ in range(100):
                got = [p for p, s in list(server.requests) if s == 200]
                if all(any(w in p and not p.endswith((".zarray", ".zattrs", "zarr.json")) for p in got) for w in want):
                    break
                page.wait_for_timeout(100)
            for w in want:  # a chunk of every volume (and of two pyramid levels) was read over HTTP
                assert any(w in p and not p.endswith((".zarray", ".zattrs", "zarr.json")) for p in got), (w, got)
            assert f"/{server.token}/m0/raw_pyramid/.zattrs" in got
            assert not [p for p, s in server.requests if s not in (200, 404)]
            page.close()
    finally:
        ng.server.stop()
