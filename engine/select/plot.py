"""PNG plots of a selection: coverage curves and the picks drawn over the volume (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from engine.select.greedy import Selection
from engine.select.patches import PatchGrid

_COLORS = {"coverage": "tab:red", "random": "tab:blue", "kcenter": "tab:green", "kmeans": "tab:purple", "hierarchical": "tab:orange"}


def plot_coverage(selections: Sequence[Selection], path: str | os.PathLike[str]) -> None:
    """Covered fraction of the patches against the number of sub-volumes, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for sel in selections:
        xs = np.arange(len(sel.coverage) + 1)
        ys = [0.0] + [c / sel.total for c in sel.coverage]
        ax.plot(xs, ys, marker="o", label=sel.method, color=_COLORS.get(sel.method))
    ax.set_xlabel("sub-volumes")
    ax.set_ylabel("patches covered (fraction)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embedding_map(grid: PatchGrid, emb: np.ndarray) -> np.ndarray:
    """First principal component of the embeddings, averaged over z: a (gy, gx) picture of the volume."""
    x = emb - emb.mean(0)
    rng = np.random.default_rng(0)
    sample = x if len(x) <= 20000 else x[rng.choice(len(x), 20000, replace=False)]
    _, _, vt = np.linalg.svd(sample.astype(np.float64), full_matrices=False)
    pc = (x @ vt[0]).reshape(grid.shape)
    return np.asarray(pc.mean(axis=0))


def plot_picks(grid: PatchGrid, emb: np.ndarray, selections: Sequence[Selection], path: str | os.PathLike[str]) -> None:
    """The picks of every method as rectangles over the in-plane embedding map (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = embedding_map(grid, emb)
    oy, ox = grid.origin[1] + grid.patch[1] / 2, grid.origin[2] + grid.patch[2] / 2
    extent = (ox - grid.stride[2] / 2, ox + (grid.shape[2] - 0.5) * grid.stride[2], oy + (grid.shape[1] - 0.5) * grid.stride[1], oy - grid.stride[1] / 2)
    n = max(1, len(selections))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4), squeeze=False)
    for ax, sel in zip(axes[0], selections, strict=False):
        ax.imshow(image, cmap="gray", extent=extent)
        for i, box in enumerate(sel.boxes):
            (_, y0, x0), (_, y1, x1) = box.start, box.stop
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=_COLORS.get(sel.method, "yellow"), lw=1.5))
            ax.text(x0, y0, f"{i + 1} z{box.start[0]}", color="yellow", fontsize=7, va="bottom")
        cov = sel.coverage[-1] / sel.total if sel.coverage else 0.0
        ax.set_title(f"{sel.method}: {cov:.1%} covered", fontsize=9)
        ax.set_xlim(0, grid.volume_shape[2])
        ax.set_ylim(grid.volume_shape[1], 0)
        ax.set_xlabel("x (voxels)")
        ax.set_ylabel("y (voxels)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
