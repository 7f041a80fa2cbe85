"""The run's history: ``OUT/history.jsonl`` (one JSON object per logged step or validation), and the
``OUT/loss.png`` plot of the loss and the validation metric."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a history file ([] if absent); a torn last line is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def truncate_history(path: str | os.PathLike[str], step: int) -> list[dict[str, Any]]:
    """Keep the records up to ``step`` (a resumed run redoes the steps after its checkpoint)."""
    kept = [r for r in read_history(path) if int(r.get("step", 0)) <= step]
    p = Path(path)
    if p.exists() or kept:
        tmp = p.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, p)
    return kept


def append_history(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot_history(records: list[dict[str, Any]], path: str | os.PathLike[str], metric: str = "iou", title: str = "training") -> None:
    """Loss over steps (left) and the validation ``metric`` over steps (right, if any) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    val = [r for r in records if metric in r]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 6, 4), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(f"{title}: loss")
    ax.grid(alpha=0.3)
    if val:
        ax2 = axes[0][1]
        ax2.plot([r["step"] for r in val], [r[metric] for r in val], "o-")
        ax2.set_xlabel("step")
        ax2.set_ylabel(metric)
        ax2.set_title(f"validation {metric}")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
