"""``report``: ``RUN/report.md`` -- what each stage ran with and produced, its time, and the PNG plots
of the run (every ``*.png`` under the run folder, plus a chart of the stage times and a preview of
the first image volume with its labels drawn on it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Config
from engine.pipeline.manifest import Manifest
from engine.pipeline.stage import Stage, StageContext


class ReportSection(Config):
    """``report:`` -- ``title`` of the Markdown report; ``serve_url``: where ``python jobs/serve.py RUN``
    serves the run folder (for the neuroglancer link); ``neuroglancer``: the neuroglancer app's URL."""

    title: str = "Connectile run"
    serve_url: str = "http://127.0.0.1:9000"
    neuroglancer: str = "https://neuroglancer-demo.appspot.com"


class ReportStage(Stage):
    name = "report"
    config = ReportSection
    outputs = ("report",)
    last = True
    order = 1000

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        manifest = Manifest(ctx.run_dir)
        done = {n: e for n, e in manifest.stages.items() if n in ctx.upstream}
        plots = ctx.dir
        _stage_times(done, plots / "stage_seconds.png")
        _preview(ctx.upstream, plots / "preview.png")
        lines = [f"# {cfg.title}", "", f"Run folder: `{ctx.run_dir}`", "", "| stage | status | config hash | seconds | outputs |", "| --- | --- | --- | --- | --- |"]
        for name, e in done.items():
            outs = "<br>".join(f"{k}: `{v}`" for k, v in e.get("outputs", {}).items())
            secs = e.get("seconds")
            lines.append(f"| {name} | {e.get('status')} | `{e.get('hash')}` | {secs:.1f} | {outs} |" if secs is not None else f"| {name} | {e.get('status')} | `{e.get('hash')}` | | {outs} |")
        link = neuroglancer_link(ctx.upstream, ctx.run_dir, cfg.serve_url, cfg.neuroglancer)
        if link:
            lines += ["", "## Neuroglancer", "", f"Serve the run folder: `python jobs/serve.py {ctx.run_dir} --port {cfg.serve_url.rsplit(':', 1)[-1]}`, then open",
                      f"[the outputs in neuroglancer]({link}).", ""]
        pngs = sorted(p for p in ctx.run_dir.rglob("*.png") if ".state" not in p.parts)
        lines += ["", "## Plots", ""]
        for png in pngs:
            rel = png.relative_to(ctx.run_dir)
            lines += [f"### {rel}", "", f"![{rel.stem}]({rel.as_posix()})", ""]
        report = ctx.run_dir / "report.md"
        report.write_text("\n".join(lines) + "\n")
        return {"report": str(report)}


#: output names shown as segmentation layers (the rest are images)
_SEGMENTATIONS = ("labels", "segmentation", "neurons", "mito", "synapses")


def neuroglancer_link(upstream: dict[str, dict[str, str]], run_dir: Path, serve_url: str, app: str) -> str | None:
    """A neuroglancer URL with one layer per zarr volume output inside the run folder (images as
    image layers, ids as segmentation layers), read from ``serve_url`` (``jobs/serve.py``)."""
    import json
    import urllib.parse

    layers = []
    root = run_dir.resolve()
    for stage, outs in upstream.items():
        for name, loc in outs.items():
            path = Path(loc.removeprefix("file://"))
            if ".zarr" not in loc or not path.is_absolute() or root not in path.resolve().parents:
                continue
            rel = path.resolve().relative_to(root).as_posix()
            kind = "segmentation" if name in _SEGMENTATIONS else "image"
            layers.append({"type": kind, "source": f"zarr://{serve_url.rstrip('/')}/{rel}", "name": f"{stage}.{name}", "visible": kind == "image" or name in ("labels", "segmentation")})
    if not layers:
        return None
    state = {"layers": layers, "layout": "4panel"}
    return f"{app.rstrip('/')}/#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")))


def _stage_times(entries: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(entries)
    secs = [float(entries[n].get("seconds") or 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1))
    ax.barh(names[::-1], secs[::-1], color="#4477aa")
    ax.set_xlabel("seconds (last run of each stage)")
    ax.set_title("stage times")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _preview(upstream: dict[str, dict[str, str]], path: Path) -> None:
    """The middle z-section of the first image (``raw``) with the first label volume's boundaries."""
    from engine.geometry import Box
    from engine.storage import open_volume

    outs = {f"{s}.{k}": v for s, o in upstream.items() for k, v in o.items()}
    raw = next((v for k, v in outs.items() if k.endswith(".raw")), None)
    labels = next((v for k, v in outs.items() if k.endswith((".labels", ".segmentation"))), None)
    if raw is None:
        path.unlink(missing_ok=True)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol = open_volume(raw)
    z = vol.spatial_shape[0] // 2
    box = Box((z, 0, 0), (z + 1, *vol.spatial_shape[1:]))
    fig, ax = plt.subplots(figsize=(6, 6 * vol.spatial_shape[1] / max(1, vol.spatial_shape[2])))
    ax.imshow(vol.read(box)[0], cmap="gray")
    title = f"{raw} z={z}"
    if labels is not None:
        lab = open_volume(labels)
        if lab.spatial_shape == vol.spatial_shape:
            sec = lab.read(box)[0]
            edge = np.zeros(sec.shape, bool)
            edge[1:] |= sec[1:] != sec[:-1]
            edge[:, 1:] |= sec[:, 1:] != sec[:, :-1]
            ax.imshow(np.ma.masked_where(~edge, edge), cmap="autumn", alpha=0.8, interpolation="nearest")
            title += f"\n+ {labels}"
    ax.set_title(title, fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
