"""Instance matching: predicted objects paired one-to-one with ground-truth objects whose IoU reaches a
threshold; precision, recall and F1 over the objects.

Above an IoU of 0.5 an object can overlap at most one other that much, so pairs are unique and are
counted directly; at 0.5 and below, each connected group of candidate pairs is solved as an
assignment that maximises the summed IoU (as StarDist does).

>>> import numpy as np
>>> gt = np.array([1, 1, 1, 1, 2, 2, 0, 0]); pred = np.array([5, 5, 5, 0, 6, 0, 0, 7])
>>> m = match_instances(pred, gt)          # IoUs: 5-1 = 3/4, 6-2 = 1/2; 7 lies on background
>>> m.tp, m.fp, m.fn, m.f1
(2, 1, 0, 0.8)
>>> m = match_instances(pred, gt, 0.6)
>>> m.tp, m.fp, m.fn, m.f1
(1, 2, 1, 0.4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.metrics.contingency import contingency


@dataclass
class Matching:
    """Counts of matched (tp), unmatched predicted (fp) and unmatched true (fn) objects, the scores,
    and the mean IoU of the matched pairs."""

    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float


def match_instances(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5, background: int = 0) -> Matching:
    """Match the objects of ``pred`` to those of ``gt`` (``background`` is no object) at
    ``iou_threshold`` (pairs with IoU >= it count)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    t = contingency(pred, gt)  # whole: object sizes count voxels on the other's background too
    n_pred = int(np.count_nonzero(t.a_ids != background))
    n_gt = int(np.count_nonzero(t.b_ids != background))
    ps, gs = t.a_sizes, t.b_sizes
    iou = t.counts / (ps[t.rows] + gs[t.cols] - t.counts)
    cand = (iou >= iou_threshold) & (t.a_ids[t.rows] != background) & (t.b_ids[t.cols] != background)
    rows, cols, vals = t.rows[cand], t.cols[cand], iou[cand]
    if iou_threshold > 0.5 or rows.size == 0:
        matched = vals
    else:
        nr, nc = t.a_ids.size, t.b_ids.size
        graph = coo_matrix((np.ones(rows.size), (rows, nr + cols)), shape=(nr + nc, nr + nc))
        _, comp = connected_components(graph, directed=False)
        edge_comp = comp[rows]
        order = np.argsort(edge_comp, kind="stable")
        bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
        picked = []
        for group in np.split(order, bounds):
            if group.size == 1:
                picked.append(vals[group])
                continue
            r_ids, r = np.unique(rows[group], return_inverse=True)
            c_ids, c = np.unique(cols[group], return_inverse=True)
            dense = np.zeros((r_ids.size, c_ids.size))
            dense[r, c] = vals[group]
            ri, ci = linear_sum_assignment(dense, maximize=True)
            got = dense[ri, ci]
            picked.append(got[got >= iou_threshold])
        matched = np.concatenate(picked)
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_gt - tp
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_gt if n_gt else 1.0
    f1 = 2 * tp / (n_pred + n_gt) if n_pred + n_gt else 1.0
    return Matching(iou_threshold, tp, fp, fn, precision, recall, f1, float(matched.mean()) if tp else 0.0)
