"""ASCMR building blocks (Zhang et al., "Active Supervised Cross-Modal Retrieval", TPAMI 2025).

The paper's text is not available here; these follow the issue's description and each choice that
goes beyond it is marked "choice:".

- Fused representation: the product of the image and text Gaussians of a pair,
  σ² = 1 / (1/σ_i² + 1/σ_t²),  μ = σ² (μ_i/σ_i² + μ_t/σ_t²)   (per dimension).
- Intra-modality uncertainty (BALD): for J label-probability samples p_j (multi-label, Bernoulli per
  class), MI = Σ_c [ H(mean_j p_jc) - mean_j H(p_jc) ]  (choice: summed over classes).
- Inter-modality uncertainty: Jensen–Shannon divergence between the image-based and the text-based
  label predictions, Σ_c JS(Bern(p_c) || Bern(q_c))  (choice: summed over classes, natural log).
- Budget allocation: per cluster c with gains sorted descending g_c[0] >= g_c[1] >= ..., choose
  counts b_c (Σ b_c = B, b_c <= n_c) maximising
      Σ_c Σ_{k<b_c} g_c[k]  -  λ Σ_c (b_c / B - t_c)²,
  a separable concave objective (cumulative sorted gains are concave, the penalty convex), so
  adding one item at a time by the largest marginal value is exact.
"""

from __future__ import annotations

import heapq

import numpy as np

from .errors import AlselError

EPS = 1e-12


def fuse_gaussians(mu_a: np.ndarray, logvar_a: np.ndarray, mu_b: np.ndarray, logvar_b: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(μ, log σ²) of the product of two diagonal Gaussians (per row, per dimension)."""
    prec_a, prec_b = np.exp(-logvar_a), np.exp(-logvar_b)
    var = 1.0 / (prec_a + prec_b)
    return var * (mu_a * prec_a + mu_b * prec_b), np.log(var)


def bernoulli_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def bald(prob_samples: np.ndarray) -> np.ndarray:
    """Mutual information between labels and embedding samples: prob_samples (J, N, C) -> (N,)."""
    mean = prob_samples.mean(axis=0)
    return (bernoulli_entropy(mean) - bernoulli_entropy(prob_samples).mean(axis=0)).sum(axis=-1)


def js_bernoulli(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Σ_c JS(Bern(p_c) || Bern(q_c)) per row: H(m) - (H(p) + H(q)) / 2 with m = (p + q) / 2."""
    return (bernoulli_entropy((p + q) / 2) - (bernoulli_entropy(p) + bernoulli_entropy(q)) / 2).sum(axis=-1)


def target_shares(sizes: np.ndarray, mix: float) -> np.ndarray:
    """Between proportional to size (mix = 0) and uniform over clusters (mix = 1)."""
    if not 0 <= mix <= 1:
        raise AlselError(f"--density-mix {mix}: expected a number in [0, 1]")
    sizes = np.asarray(sizes, dtype=np.float64)
    return (1 - mix) * sizes / sizes.sum() + mix / len(sizes)


def allocate(gains: list[np.ndarray], shares: np.ndarray, budget: int, lam: float) -> list[int]:
    """Exact greedy for max Σ_c Σ_{k<b_c} g_c[k] - λ Σ_c (b_c/B - t_c)², Σ b_c = B, 0 <= b_c <= n_c.
    `gains[c]` sorted descending. Ties: the lower cluster index first."""
    total = sum(len(g) for g in gains)
    if not 1 <= budget <= total:
        raise AlselError(f"--budget {budget}: expected 1..{total} (the pool size)")

    def marginal(c: int, b: int) -> float:
        t = shares[c]
        return float(gains[c][b]) - lam * (((b + 1) / budget - t) ** 2 - (b / budget - t) ** 2)

    counts = [0] * len(gains)
    heap = [(-marginal(c, 0), c) for c in range(len(gains)) if len(gains[c])]
    heapq.heapify(heap)
    for _ in range(budget):
        _, c = heapq.heappop(heap)
        counts[c] += 1
        if counts[c] < len(gains[c]):
            heapq.heappush(heap, (-marginal(c, counts[c]), c))
    return counts


def objective(gains: list[np.ndarray], shares: np.ndarray, counts, budget: int, lam: float) -> float:
    return sum(float(np.sum(g[:b])) for g, b in zip(gains, counts)) - lam * sum(
        (b / budget - t) ** 2 for b, t in zip(counts, shares))
