"""``metrics``: the rounds side by side -- ``RUN/metrics/metrics.json`` and ``metrics.md`` (a table per
round: IoU, Dice, VOI, ROI accuracy, objects), ``metrics_per_round.png`` and ``learning_curves.png``
(training loss and validation IoU over steps: the base training, then each fine-tuning, one curve)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.pipeline.stage import Stage, StageContext


class MetricsSection(Config):
    """``metrics:`` -- ``round1`` .. ``round3``: ``score<r>.metrics``; ``train``: ``train.history``;
    ``finetune1`` .. ``finetune3``: ``finetune<r>.history`` (all optional)."""

    round1: str | None = None
    round2: str | None = None
    round3: str | None = None
    train: str | None = None
    finetune1: str | None = None
    finetune2: str | None = None
    finetune3: str | None = None


COLUMNS = (("iou", "IoU"), ("dice", "Dice"), ("voi_split", "VOI split"), ("voi_merge", "VOI merge"), ("roi_accuracy", "ROI accuracy"), ("objects", "objects"))


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table, one row per round."""
    lines = ["| round | model | " + " | ".join(c[1] for c in COLUMNS) + " |", "| --- | --- |" + " --- |" * len(COLUMNS)]
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key)
            cells.append("" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        model = "base (train)" if r["round"] == 1 else f"fine-tuned x{r['round'] - 1}"
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


class MetricsStage(Stage):
    name = "metrics"
    config = MetricsSection
    inputs = ("round1", "round2", "round3", "train", "finetune1", "finetune2", "finetune3")
    outputs = ("metrics", "table")
    order = 900

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.learn.history import read_history

        rows = []
        for r in (1, 2, 3):
            value = getattr(cfg, f"round{r}")
            if value is not None:
                rows.append({**json.loads(Path(ctx.input(value)).read_text()), "round": r})
        parts = []
        for name in ("train", "finetune1", "finetune2", "finetune3"):
            value = getattr(cfg, name)
            if value is not None and Path(ctx.input(value)).exists():
                parts.append((name, read_history(ctx.input(value))))
        if rows:
            _plot_rounds(rows, ctx.dir / "metrics_per_round.png")
        if parts:
            _plot_curves(parts, ctx.dir / "learning_curves.png")
        md = ["## Metrics per round", "", *table_lines(rows), ""]
        (ctx.dir / "metrics.md").write_text("\n".join(md) + "\n")
        path = ctx.dir / "metrics.json"
        path.write_text(json.dumps({"rounds": rows}, indent=1))
        return {"metrics": str(path), "table": str(ctx.dir / "metrics.md")}
