"""The ASCMR active-learning experiment (issue 7): labels are what annotators provide.

A pool of pairs (images with captions) starts with `initial` labelled images; each round trains the
probabilistic head on the labelled pairs, measures mAP@all on the test store (image→text and
text→image, averaged) with the normalised means as embeddings, and labels `step` more pool images
chosen by a strategy. The fully supervised reference trains on every pool pair with the same
settings. The headline figure is the fraction of the pool labelled when the mAP first reaches 95%
of the fully supervised mAP (the paper's measure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ascmr import ASCMR_STRATEGIES, AscmrConfig, choose_rows
from .errors import AlselError
from .metrics import label_map
from .probhead import ProbConfig, train_prob_head

BASELINES = ("random", "coreset")
STRATEGIES = ASCMR_STRATEGIES + BASELINES


@dataclass
class Pairs:
    images: np.ndarray
    texts: np.ndarray
    text_image: np.ndarray
    image_labels: np.ndarray
    text_labels: np.ndarray

    @classmethod
    def from_store(cls, st) -> "Pairs":
        from .metrics import store_labels

        return cls(st.images.read(), st.texts.read(), st.text_image.copy(), store_labels(st, "images"),
                   store_labels(st, "texts"))

    def subset(self, rows: np.ndarray) -> "Pairs":
        """The pairs of the given images (their captions follow, image indices renumbered)."""
        rows = np.asarray(rows, dtype=np.int64)
        new = np.full(len(self.images), -1, dtype=np.int64)
        new[rows] = np.arange(len(rows))
        keep = np.flatnonzero(new[self.text_image] >= 0)
        return Pairs(self.images[rows], self.texts[keep], new[self.text_image[keep]], self.image_labels[rows],
                     self.text_labels[keep])


def test_map(head, test: Pairs, device) -> float:
    """Mean of image→text and text→image mAP@all, with the normalised Gaussian means as embeddings."""
    with torch.no_grad():
        emb = {}
        for side, x in (("image", test.images), ("text", test.texts)):
            mu, _ = head.gaussian(torch.from_numpy(np.asarray(x, np.float32)).to(device), side)
            emb[side] = torch.nn.functional.normalize(mu, dim=1).cpu().numpy()
    m = label_map(emb["image"], test.image_labels, emb["text"], test.text_labels, device)
    return (m["i2t_map"] + m["t2i_map"]) / 2


def coreset_rows(pool: Pairs, labelled: np.ndarray, unlabelled: np.ndarray, budget: int, device) -> np.ndarray:
    """k-center greedy on the raw image embeddings (SPEC §3's core-set), labelled images as centers."""
    from .selection import kcenter_greedy
    from .stream import ArrayRows

    rows, _ = kcenter_greedy(ArrayRows(pool.images[unlabelled]), pool.images[labelled], budget, device)
    return rows


def run_strategy(pool: Pairs, test: Pairs, strategy: str, seed: int, initial: int, step: int, rounds: int,
                 prob: ProbConfig, config: AscmrConfig, device) -> list[tuple[int, float]]:
    """[(labelled images, test mAP)] after each training, initial set included."""
    if strategy not in STRATEGIES:
        raise AlselError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    n = len(pool.images)
    rng = np.random.default_rng(seed)
    labelled = np.sort(rng.choice(n, size=initial, replace=False))
    curve = []
    for r in range(rounds + 1):
        part = pool.subset(labelled)
        head, _ = train_prob_head(part.images, part.texts, part.text_image, part.image_labels, part.text_labels,
                                  ProbConfig(**{**prob.__dict__, "seed": seed}), device)
        curve.append((len(labelled), test_map(head, test, device)))
        if r == rounds or len(labelled) >= n:
            break
        unlabelled = np.setdiff1d(np.arange(n), labelled)
        b = min(step, len(unlabelled))
        if strategy == "random":
            pick = rng.choice(len(unlabelled), size=b, replace=False)
        elif strategy == "coreset":
            pick = coreset_rows(pool, labelled, unlabelled, b, device)
        else:
            u = pool.subset(unlabelled)
            pick, _ = choose_rows(strategy, head, u.images, u.texts, u.text_image, b,
                                  AscmrConfig(**{**config.__dict__, "seed": seed * 1000 + r}), device)
        labelled = np.sort(np.concatenate([labelled, unlabelled[pick]]))
    return curve


def full_map(pool: Pairs, test: Pairs, prob: ProbConfig, seed: int, device) -> float:
    head, _ = train_prob_head(pool.images, pool.texts, pool.text_image, pool.image_labels, pool.text_labels,
                              ProbConfig(**{**prob.__dict__, "seed": seed}), device)
    return test_map(head, test, device)


def fraction_to_reach(curve: list[tuple[int, float]], target: float, n_pool: int) -> float | None:
    """Fraction of the pool labelled when the curve first reaches `target` (None: never within the run)."""
    for labelled, m in curve:
        if m >= target:
            return labelled / n_pool
    return None
