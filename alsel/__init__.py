"""alsel: active learning for image-text retrieval (hard-negative selection, Jo et al. 2405.16301).

Every stage is a function over stores and arrays; `cli.py` is only the command-line front. On arrays
(numpy or torch, unit rows), without files: `xi`, `hard_negative_scores`, `select`, `recall`
(alsel.arrays).
"""

__version__ = "0.1.0"

from .errors import AlselError  # noqa: E402
from .store import Embeddings, Paired, Store, load_paired, open_store, write_store  # noqa: E402
from .stream import ArrayRows, resolve_device, sweep  # noqa: E402
from .thresholds import ThresholdParams, Thresholds, compute_xi, load_thresholds, make_thresholds  # noqa: E402
from .scoring import score_pool, score_rows  # noqa: E402
from .selection import (kcenter_greedy, load_scores, select_by_score, select_coreset,  # noqa: E402
                        select_random, top_b)
from .synth import make_world, synth_stores  # noqa: E402
from . import strategies  # noqa: E402  (the registry: strategies.select, strategies.Inputs, ...)
from .arrays import HardNegativeScores, hard_negative_scores, memory_store, recall, select, xi  # noqa: E402

__all__ = [
    "AlselError", "ArrayRows", "HardNegativeScores", "hard_negative_scores", "memory_store", "recall", "select", "xi", "Embeddings", "Paired", "Store", "ThresholdParams", "Thresholds",
    "compute_xi", "kcenter_greedy", "load_paired", "load_scores", "load_thresholds", "make_thresholds",
    "make_world", "open_store", "resolve_device", "score_pool", "score_rows", "select_by_score",
    "select_coreset", "select_random", "strategies", "sweep", "synth_stores", "top_b", "write_store",
]
