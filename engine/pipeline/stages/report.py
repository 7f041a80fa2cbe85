"""``report``: ``RUN/report.md`` -- the metrics per round (the ``metrics`` stage's table and plot),
the selection (picks and coverage plots), the learning curves, what each stage ran with and produced
and its time, every other PNG plot of the run (plus a chart of the stage times and a preview of the
raw volume with the objects drawn on it), and at the end a neuroglancer link to the outputs (built with
:mod:`engine.view`; ``connectile view RUN --port PORT`` serves them, token-protected)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Config
from engine.pipeline.manifest import Manifest
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage

log = logging.getLogger(__name__)


class ReportSection(Config):
    """``report:`` -- ``title`` of the Markdown report; ``serve_url``: where ``connectile view RUN --port PORT``
    serves the run folder (for the neuroglancer link); ``neuroglancer``: the neuroglancer app's URL."""

    title: str = "Connectile run"
    serve_url: str = "http://127.0.0.1:9000"
    neuroglancer: str = "https://neuroglancer-demo.appspot.com"


class ReportStage(DeclaredStage, name="report", config=ReportSection, outputs=("report",), order=1000, last=True):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        manifest = Manifest(ctx.run_dir)
        done = {n: e for n, e in manifest.stages.items() if n in ctx.upstream}
        plots = ctx.dir
        _stage_times(done, plots / "stage_seconds.png")
        _preview(ctx.upstream, plots / "preview.png")
        run_dir = ctx.run_dir
        lines = [f"# {cfg.title}", "", f"Run folder: `{run_dir}` ({len(done)} stages; `manifest.json` records each one's config hash and outputs).", ""]
        shown: set[Path] = set()

        def plot(path: Path, caption: str) -> list[str]:
            if not path.is_file():
                return []
            shown.add(path.resolve())
            rel = path.relative_to(run_dir).as_posix()
            return [f"![{caption}]({rel})", "", f"*{caption}* (`{rel}`)" if caption != rel else f"`{rel}`", ""]

        table = ctx.upstream.get("metrics", {}).get("table")
        metrics_dir = Path(table).parent if table else None
        if table and Path(table).is_file():
            text = Path(table).read_text().splitlines()
            body = [ln for ln in text if ln.startswith("|")]
            body += ["", *(ln for ln in text if ln.startswith("Ceiling"))]  # the metrics stage's ceiling line, if any
            lines += ["## Metrics per round", "", "Round r scores the model after r-1 rounds of review and fine-tuning against the ground truth. "
                      "A round whose fine-tuned model scored lower on the held-out annotated voxels keeps the previous model (the table says so).", "", *body, ""]
            lines += plot(metrics_dir / "metrics_per_round.png", "metrics per round") if metrics_dir else []
            lines += plot(metrics_dir / "quality_vs_effort.png", "quality against labelling effort (labelled voxels, reviewed answers)") if metrics_dir else []
        sel = ctx.upstream.get("selection", {}).get("boxes")
        if sel:
            sel_dir = Path(sel).parent
            pngs = [*plot(sel_dir / "picks.png", "the selected sub-volumes (picks)"), *plot(sel_dir / "coverage.png", "coverage gained per pick")]
            if pngs:
                lines += ["## The selection", "", *pngs]
        curves = [*(plot(metrics_dir / "learning_curves.png", "learning curves: training loss and validation IoU, training then each fine-tuning")
                    if metrics_dir else [])]
        if not curves:
            for stage in sorted(ctx.upstream):
                hist = ctx.upstream[stage].get("history")
                if hist:
                    curves += plot(Path(hist).parent / "loss.png", f"{stage}: learning curve")
        if curves:
            lines += ["## Learning curves", "", *curves]

        lines += ["## Stages", "", "| stage | status | config hash | seconds | outputs |", "| --- | --- | --- | --- | --- |"]
        for name, e in done.items():
            outs = "<br>".join(f"{k}: `{v}`" for k, v in e.get("outputs", {}).items())
            secs = e.get("seconds")
            lines.append(f"| {name} | {e.get('status')} | `{e.get('hash')}` | {'' if secs is None else f'{secs:.1f}'} | {outs} |")
        lines.append("")
        rest = sorted(q for q in run_dir.rglob("*.png") if ".state" not in q.parts and q.resolve() not in shown)
        if rest:
            lines += ["## Other plots", ""]
            for png in rest:
                lines += plot(png, png.relative_to(run_dir).as_posix())
        link = neuroglancer_link(ctx.upstream, run_dir, cfg.serve_url, cfg.neuroglancer)
        if link:
            port = cfg.serve_url.rsplit(":", 1)[-1]
            lines += ["## Neuroglancer", "",
                      f"Serve the run folder with `connectile view {run_dir} --port {port}` (the link holds the run's access token), then open "
                      f"[the outputs in neuroglancer]({link}) (raw, the last prediction and objects shown; the other rounds, the selected "
                      "sub-volumes and the last round's queried ROIs as further layers). `connectile view` builds the same view of any run folder.", ""]
        report = run_dir / "report.md"
        report.write_text("\n".join(lines) + "\n")
        return {"report": str(report)}


#: output names shown as segmentation layers whatever their dtype (the rest: by dtype and name, see engine.view)
_SEGMENTATIONS = ("labels", "segmentation", "neurons", "mito", "synapses")


def _round(stage: str) -> int:
    from engine.pipeline.rounds import parse_key

    parsed = parse_key(stage)
    return parsed[1] if parsed else 0


def neuroglancer_link(upstream: dict[str, dict[str, str]], run_dir: Path, serve_url: str, app: str) -> str | None:
    """A neuroglancer URL (built with :mod:`engine.view`) for the volume outputs inside the run folder that
    lie on the raw volume's grid, read from ``serve_url`` (``connectile view RUN``, with the run's token): the raw image,
    then the last round's prediction and objects (visible), then the other volumes (hidden), the
    selected sub-volumes as boxes and the last query stage's ROIs as points (coloured by the review's
    answers). None when the run has no volume to show."""
    from engine.errors import StorageError
    from engine.view import build_state, discover_run, served_run_url, volume_layer
    from engine.view import neuroglancer_link as link_of
    from engine.view.state import Layer

    root = run_dir.resolve()
    found: list[tuple[str, str, Layer]] = []
    for stage, outs in upstream.items():
        for name, loc in outs.items():
            path = Path(loc.removeprefix("file://"))
            if ".zarr" not in loc or not path.is_absolute() or root not in path.resolve().parents:
                continue
            try:
                found.append((stage, name, volume_layer(path, "segmentation" if name in _SEGMENTATIONS else None, name=f"{stage}.{name}")))
            except StorageError as err:
                log.warning("report: no neuroglancer layer for %s: %s", loc, err)
    raw = next((x for x in found if x[1] == "raw"), None)
    if raw is None:
        return None
    grid = raw[2].shape[-3:]
    found = [x for x in found if x[2].shape[-3:] == grid and len(x[2].shape) - 3 <= 1 and (len(x[2].shape) == 3 or x[2].shape[0] <= 3)]

    def last(kind: str) -> Layer | None:
        cands = [x for x in found if x[2].kind == kind and x[0] != raw[0] and x[1] != "validation"]
        return max(cands, key=lambda x: (_round(x[0]), x[0]))[2] if cands else None

    visible = [raw[2], *(la for la in (last("prediction"), last("segmentation")) if la is not None)]
    order = {"image": 0, "prediction": 1, "segmentation": 2}
    layers = visible + sorted((x[2] for x in found if x[2] not in visible), key=lambda la: (order[la.kind], la.name))

    served = served_run_url(serve_url, root)

    def url_of(layer: Layer) -> str:
        rel = Path(layer.source_path.removeprefix("file://")).resolve().relative_to(root).as_posix()
        return f"{served}/{rel}"

    boxes: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    sel = upstream.get("selection", {}).get("boxes")
    # the last query stage that asked something (a round may have had nothing new to ask)
    queries = sorted((s for s, o in upstream.items() if "rois" in o and any(Path(o["rois"]).glob("rounds/round-*/queries.parquet"))),
                     key=lambda s: (_round(s), s))
    if sel or queries:
        view = discover_run(upstream[queries[-1]]["rois"] if queries else run_dir, raw=raw[2].url, selection=sel)
        boxes, points = view.boxes, (view.points if queries else [])
    state = build_state(layers, url_of=url_of, boxes=boxes, points=points, voxel_size=raw[2].voxel_size, shape=grid)
    for layer_json in state["layers"][len(visible):len(layers)]:
        layer_json["visible"] = False
    return link_of(state, app)


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
    """The middle z-section of the raw volume with the boundaries of the last round's objects (the
    label volume of the highest-numbered stage; the annotated boxes only where there is no other)."""
    from engine.geometry import Box
    from engine.storage import open_volume

    outs = {f"{s}.{k}": v for s, o in upstream.items() for k, v in o.items()}
    raw = next((v for k, v in outs.items() if k.endswith(".raw")), None)
    found = [(k.split(".")[0], v) for k, v in outs.items() if k.endswith((".labels", ".segmentation"))]
    labels = max(found, key=lambda x: (x[0] != "annotate", _round(x[0]), x[0]))[1] if found else None
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
