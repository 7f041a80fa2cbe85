"""Segmentation metrics: VOI split/merge, adapted Rand error, Jaccard/VOC/Dice, CREMI distances,
instance matching. Each takes numpy arrays (a crop or a whole small volume) and returns plain numbers.
"""

from engine.metrics.contingency import Contingency, contingency
from engine.metrics.distance import CremiDistances, cremi_distances
from engine.metrics.matching import Matching, match_instances
from engine.metrics.overlap import dice, jaccard, voc
from engine.metrics.segmentation import AdaptedRand, adapted_rand, voi

__all__ = [
    "AdaptedRand",
    "Contingency",
    "CremiDistances",
    "Matching",
    "adapted_rand",
    "contingency",
    "cremi_distances",
    "dice",
    "jaccard",
    "match_instances",
    "voc",
    "voi",
]
