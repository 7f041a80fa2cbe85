"""Active learning on ROIs (two-stream active query suggestion, Lin et al., ECCV 2020).

One module per step; this package imports nothing heavy (no torch) at import time:

=============== ==========================================================================================
module          what
=============== ==========================================================================================
``rois``        ROI crops: slice of largest area per object, PCA alignment, run-directory layout
``features``    training the mask VAE (E_s) and the image VAE (E_u), encoding ROIs into features
``query``       query suggestion: hierarchical two-stream clustering, late fusion and baselines
``triplet``     the triplet loss of eq. (2) and active fine-tuning of E_u on reviewed ROIs
``rounds``      the query step of a round in a run directory (``connectile query``)
``oracle``      answers from ground truth (an annotator that is never wrong), ROI accuracy
``finetune``    training targets for the base model from reviewed ROIs (rejected -> background)
``pixel``       a small pixel classifier: the weak base model of the protocols and tests
``propagation`` label-propagation accuracy (Table 2 protocol of the paper)
``answers``     the answer store of a round (owned by the review page)
=============== ==========================================================================================

The run directory (see :mod:`engine.active.rois` for the exact contract)::

    RUN/rois/rois.zarr            image (N, S, S) uint8, mask (N, S, S) uint8; row i is roi_id i
    RUN/rois/index.parquet        roi_id, object_id, z, y, x, area, angle, score, ...
    RUN/features/                 mask.npy, image.npy (VAE means), mask_vae.pt, image_vae.pt
    RUN/rounds/round-NN/          queries.parquet, answers.sqlite, image_vae.pt (after triplet tuning)
"""
