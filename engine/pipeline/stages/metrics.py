"""``metrics``: the rounds side by side -- ``RUN/metrics/metrics.json`` and ``metrics.md`` (a table per
round: IoU, Dice, VOI, ROI accuracy, objects, labelling effort, and whether the round's fine-tuned model
was kept), ``metrics_per_round.png`` (each metric per round), ``quality_vs_effort.png`` (IoU against the
labelled voxels and the reviewed answers so far) and ``learning_curves.png`` (training loss and
validation IoU over steps: the base training, then each fine-tuning, one curve).

In a config with ``rounds:``, an empty ``metrics: {}`` gathers every round by itself: ``score[r].metrics``,
``train.history``, ``finetune[r].history`` and ``finetune[r].decision`` (the wiring of :meth:`MetricsStage.wire`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage


class MetricsSection(Config):
    """``metrics:`` -- ``scores``: ``score[r].metrics`` per round; ``histories``: ``train.history`` then
    ``finetune[r].history``; ``decisions``: ``finetune[r].decision``; ``effort``: ``annotate.boxes`` (the
    labelled voxels); ``ceiling``: ``ceiling.metrics`` (a model trained on all labels outside the test
    region). Each is filled in from the run's stages when not given."""

    scores: list[str] | None = None
    histories: list[str] | None = None
    decisions: list[str] | None = None
    effort: str | None = None
    ceiling: str | None = None


COLUMNS = (("iou", "IoU"), ("dice", "Dice"), ("voi_split", "VOI split"), ("voi_merge", "VOI merge"), ("roi_accuracy", "ROI accuracy"), ("objects", "objects"),
           ("heldout_score", "held-out IoU"), ("labelled_voxels", "labelled voxels"), ("reviewed", "reviewed answers"))


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table, one row per round."""
    lines = ["| round | model | " + " | ".join(c[1] for c in COLUMNS) + " |", "| --- | --- |" + " --- |" * len(COLUMNS)]
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key)
            cells.append("" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        model = "base (train)" if r["round"] == 1 else f"after {r['round'] - 1} round(s)"
        if r.get("kept") == "previous":
            model += ": new model worse on held-out, previous kept"
        elif r.get("kept") == "average":
            model += ": too few held-out objects to judge, new and previous models averaged"
        elif r.get("too_close"):
            model += ": lower on held-out but too close to tell apart, new model used"
        lines.append(f"| {r['round']} | {model} | " + " | ".join(cells) + " |")
    return lines


def _plot_rounds(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("iou", "IoU"), ("dice", "Dice"), ("roi_accuracy", "ROI accuracy"), ("voi", "VOI (bits)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3))
    xs = [r["round"] for r in rows]
    for ax, (key, title) in zip(axes, keys, strict=True):
        ys = [float(r[key]) if r.get(key) is not None else float("nan") for r in rows]
        ax.plot(xs, ys, "o-", color="tab:red")
        ax.set_xticks(xs)
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle("metrics per round (round r: the model after r-1 fine-tunings)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_curves(parts: list[tuple[str, list[dict[str, Any]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, recs in parts:
        tr = [r for r in recs if "loss" in r]
        va = [r for r in recs if "iou" in r]
        if tr:
            a1.plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=1, label=name)
        if va:
            a2.plot([r["step"] for r in va], [r["iou"] for r in va], "o-", label=name)
    a1.set(xlabel="step", ylabel="training loss", title="training loss")
    a2.set(xlabel="step", ylabel="IoU", title="validation IoU (ground truth)")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def ceiling_line(ceiling: dict[str, Any] | None) -> list[str]:
    """The ceiling's line under the table (none without a ceiling)."""
    if not ceiling:
        return []
    return [f"Ceiling (a model trained the same way on all {ceiling['labelled_voxels']:,} labelled voxels outside the test region): "
            f"IoU {ceiling['iou']:.3f}, Dice {ceiling['dice']:.3f}."]


def _plot_effort(rows: list[dict[str, Any]], path: Path, ceiling: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("labelled_voxels") is not None]
    if not rows:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    ys = [float(r["iou"]) for r in rows]
    a1.plot([r["labelled_voxels"] for r in rows], ys, "o-", color="tab:blue")
    a2.plot([r.get("reviewed") or 0 for r in rows], ys, "o-", color="tab:green")
    for r, y in zip(rows, ys, strict=True):
        a1.annotate(f"r{r['round']}", (r["labelled_voxels"], y), fontsize=7)
        a2.annotate(f"r{r['round']}", (r.get("reviewed") or 0, y), fontsize=7)
    a1.set(xlabel="labelled voxels (annotated boxes + reviewed objects + painted boxes)", ylabel="IoU", title="quality vs labelled voxels")
    a2.set(xlabel="reviewed answers so far", ylabel="IoU", title="quality vs reviewed answers")
    for ax in (a1, a2):
        if ceiling:
            ax.axhline(float(ceiling["iou"]), color="grey", ls="--", lw=1, label="ceiling: all labels outside the test region")
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _effort(rows: list[dict[str, Any]], decisions: list[dict[str, Any]], annotated: int | None) -> None:
    """Add to each round's row the labelling effort behind its model and the gate's decision: round r's
    model saw the annotated voxels plus the answers of rounds 1 .. r-1."""
    voxels, reviewed = annotated, 0
    for r in rows:
        k = int(r["round"])
        if k >= 2 and k - 2 < len(decisions):
            d = decisions[k - 2]
            lab = d.get("labels", {})
            # counts are cumulative (every round so far is painted), so the latest one is the total
            reviewed = int(lab.get("accepted", 0)) + int(lab.get("rejected", 0))
            voxels = None if annotated is None else annotated + sum(int(lab.get(k, 0)) for k in ("voxels_fg", "voxels_bg", "voxels_boxes"))
            r.update(kept=d.get("kept"), heldout_score={"candidate": d.get("candidate_score"), "previous": d.get("previous_score")}.get(d.get("kept") or ""),
                     too_close=d.get("share_worse") is not None and d.get("kept") == "candidate")
        r.update(labelled_voxels=voxels, reviewed=reviewed)


class MetricsStage(DeclaredStage, name="metrics", config=MetricsSection, order=900,
                   inputs=("scores", "histories", "decisions", "effort", "ceiling"), outputs=("metrics", "table")):
    @classmethod
    def wire(cls, section: Config, plan_keys: list[str]) -> Config:
        from engine.pipeline.rounds import parse_key

        def keys(kind: str) -> list[str]:
            return sorted((k for k in plan_keys if (p := parse_key(k)) is not None and p[0] == kind), key=lambda k: parse_key(k)[1])  # type: ignore[index]

        update: dict[str, Any] = {}
        if getattr(section, "scores", None) is None and keys("score"):
            update["scores"] = [f"{k}.metrics" for k in keys("score")]
        if getattr(section, "histories", None) is None and (keys("finetune") or "train" in plan_keys):
            update["histories"] = (["train.history"] if "train" in plan_keys else []) + [f"{k}.history" for k in keys("finetune")]
        if getattr(section, "decisions", None) is None and keys("finetune"):
            update["decisions"] = [f"{k}.decision" for k in keys("finetune")]
        if getattr(section, "effort", None) is None and "annotate" in plan_keys:
            update["effort"] = "annotate.boxes"
        if getattr(section, "ceiling", None) is None and "ceiling" in plan_keys:
            update["ceiling"] = "ceiling.metrics"
        return section.model_copy(update=update) if update else section

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.learn.history import read_history

        rows = []
        for r, value in enumerate(cfg.scores or [], start=1):
            rows.append({**json.loads(Path(ctx.input(value)).read_text()), "round": r})
        decisions = [json.loads(Path(ctx.input(v)).read_text()) for v in cfg.decisions or []]
        annotated = None
        if cfg.effort:
            info = Path(ctx.input(cfg.effort)).with_name("annotate.json")
            if info.exists():
                a = json.loads(info.read_text())
                annotated = int(a.get("known_voxels", 0)) + int(a.get("heldout_voxels", 0))
        _effort(rows, decisions, annotated)
        ceiling = json.loads(Path(ctx.input(cfg.ceiling)).read_text()) if cfg.ceiling else None
        parts = []
        for value in cfg.histories or []:
            if Path(ctx.input(value)).exists():
                parts.append((value.rpartition(".")[0], read_history(ctx.input(value))))
        if rows:
            _plot_rounds(rows, ctx.dir / "metrics_per_round.png")
            _plot_effort(rows, ctx.dir / "quality_vs_effort.png", ceiling)
        if parts:
            _plot_curves(parts, ctx.dir / "learning_curves.png")
        md = ["## Metrics per round", "", *table_lines(rows), "", *ceiling_line(ceiling)]
        (ctx.dir / "metrics.md").write_text("\n".join(md) + "\n")
        path = ctx.dir / "metrics.json"
        path.write_text(json.dumps({"rounds": rows, **({"ceiling": ceiling} if ceiling else {})}, indent=1))
        return {"metrics": str(path), "table": str(ctx.dir / "metrics.md")}
