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
    """``report:`` -- ``title`` of the Markdown report."""

    title: str = "Connectile run"


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
        pngs = sorted(p for p in ctx.run_dir.rglob("*.png") if ".state" not in p.parts)
        lines += ["", "## Plots", ""]
        for png in pngs:
            rel = png.relative_to(ctx.run_dir)
            lines += [f"### {rel}", "", f"![{rel.stem}]({rel.as_posix()})", ""]
        report = ctx.run_dir / "report.md"
        report.write_text("\n".join(lines) + "\n")
        return {"report": str(report)}


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
