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
from dataclasses import dataclass

import numpy as np

from .clustering import kmeans
from .errors import AlselError

EPS = 1e-12


def _exp_log(x):
    """exp and log for x's kind: NumPy's for an array, the tensor's own methods for a torch tensor
    (informativeness passes float64 tensors: torch's kernels use every core, NumPy's one)."""
    return (np.exp, np.log) if isinstance(x, np.ndarray) else (lambda t: t.exp(), lambda t: t.log())


def fuse_gaussians(mu_a, logvar_a, mu_b, logvar_b):
    """(μ, log σ²) of the product of two diagonal Gaussians (per row, per dimension); arrays or tensors."""
    exp, log = _exp_log(mu_a)
    prec_a, prec_b = exp(-logvar_a), exp(-logvar_b)
    var = 1.0 / (prec_a + prec_b)
    return var * (mu_a * prec_a + mu_b * prec_b), log(var)


def bernoulli_entropy(p):
    """H(p) = -p log p - (1-p) log(1-p), elementwise (p clipped away from 0 and 1); an array or a tensor."""
    p = p.clip(EPS, 1 - EPS)
    log = _exp_log(p)[1]
    return -(p * log(p) + (1 - p) * log(1 - p))


def bald(prob_samples):
    """Mutual information between labels and embedding samples: prob_samples (J, N, C) -> (N,); an array or
    a tensor."""
    mean = prob_samples.mean(axis=0)
    return (bernoulli_entropy(mean) - bernoulli_entropy(prob_samples).mean(axis=0)).sum(axis=-1)


def js_bernoulli(p, q):
    """Σ_c JS(Bern(p_c) || Bern(q_c)) per row: H(m) - (H(p) + H(q)) / 2 with m = (p + q) / 2; arrays or tensors."""
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
    """The allocation objective: Σ_c (sum of the b_c best gains of cluster c) - λ Σ_c (b_c/B - t_c)²."""
    return sum(float(np.sum(g[:b])) for g, b in zip(gains, counts)) - lam * sum(
        (b / budget - t) ** 2 for b, t in zip(counts, shares))


# --------------------------------------------------------------------------- informativeness of pool pairs

INFO_ROWS = 4096  # pool images per block


def n_rows(src) -> int:
    """Rows of an array or of a store's Embeddings reader."""
    return src.n if hasattr(src, "load") else len(src)


def read_rows(src, rows: np.ndarray) -> np.ndarray:
    """float32 rows of an array or of a store's Embeddings reader (read as runs of consecutive rows, so a
    block of a store whose captions follow their images costs one read; mapped pages released after the
    read); `rows` sorted ascending."""
    if not hasattr(src, "load"):
        return np.asarray(src[rows], np.float32)
    if len(rows) == 0:
        return np.zeros((0, src.d), np.float32)
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    out = []
    for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(rows)]])):
        lo, hi = int(rows[a]), int(rows[b - 1]) + 1
        out.append(src.read(lo, hi))
        src.release(lo, hi)  # read once: drop the mapped pages, as scoring does
    return np.concatenate(out)


def informativeness(head, images: np.ndarray, texts: np.ndarray, text_image: np.ndarray, device, samples: int = 8,
                    seed: int = 0, rows: int = INFO_ROWS) -> dict[str, np.ndarray]:
    """Per pool image (a pool pair = an image and its captions), in blocks of `rows` images:
      intra = (BALD of the image's samples + BALD of the captions' samples) / 2
      inter = JS(mean label prediction of the image, mean label prediction of its captions)
      mu, logvar = the fused (product-of-Gaussians) representation, used for clustering
      entropy = Σ_c H(p_c) of the label prediction at the image's mean embedding (the entropy baseline).
    choice: an image's caption side is the mean of its captions' (μ, σ²); an image without captions has
    inter = 0 and uses its own Gaussian as the fused one. The samples of each block come from a generator
    seeded by `seed` and the block's first row: the same pool, seed and `rows` give the same values.
    `images` and `texts` are arrays or a store's readers: only one block is in memory at a time."""
    import torch

    text_image = np.asarray(text_image, dtype=np.int64)
    n = n_rows(images)
    order = np.argsort(text_image, kind="stable")
    starts = np.searchsorted(text_image[order], np.arange(n + 1))
    out = {"intra": np.zeros(n), "inter": np.zeros(n), "mu": np.empty((n, head.config.dim), np.float32),
           "logvar": np.empty((n, head.config.dim), np.float32), "entropy": np.empty(n)}
    with torch.no_grad():
        for a in range(0, n, rows):
            b = min(n, a + rows)
            gen = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + a)
            x = torch.from_numpy(read_rows(images, np.arange(a, b))).to(device)
            mu_i, lv_i = head.gaussian(x, "image")
            p_mean = head.label_probs(mu_i, lv_i, torch.zeros((1, *mu_i.shape), device=device))[0]
            out["entropy"][a:b] = bernoulli_entropy(p_mean.double().cpu().numpy()).sum(axis=1)
            cap = np.sort(order[starts[a]:starts[b]])
            owner = torch.from_numpy(text_image[cap] - a).to(device)
            mu_c, lv_c = head.gaussian(torch.from_numpy(read_rows(texts, cap)).to(device), "text")
            count = torch.zeros(b - a, device=device).index_add_(0, owner, torch.ones(len(cap), device=device))
            has = count > 0
            denom = count.clamp(min=1)[:, None]
            mu_t = torch.zeros_like(mu_i).index_add_(0, owner, mu_c) / denom
            var_t = torch.zeros_like(mu_i).index_add_(0, owner, lv_c.exp()) / denom
            lv_t = torch.where(has[:, None], var_t.clamp(min=1e-12).log(), lv_i)
            mu_t = torch.where(has[:, None], mu_t, mu_i)
            eps = torch.randn((2, samples, b - a, mu_i.shape[1]), generator=gen, device=device)
            p_i = head.label_probs(mu_i, lv_i, eps[0]).double()
            p_t = head.label_probs(mu_t, lv_t, eps[1]).double()
            hv = has.cpu().numpy()
            bald_i, bald_t = bald(p_i).cpu().numpy(), bald(p_t).cpu().numpy()
            out["intra"][a:b] = np.where(hv, (bald_i + bald_t) / 2, bald_i)
            out["inter"][a:b] = np.where(hv, js_bernoulli(p_i.mean(axis=0), p_t.mean(axis=0)).cpu().numpy(), 0.0)
            mu_i, lv_i = mu_i.double(), lv_i.double()
            mu_f, lv_f = fuse_gaussians(mu_i, lv_i, mu_t.double(), lv_t.double())
            out["mu"][a:b] = torch.where(has[:, None], mu_f, mu_i).cpu().numpy()
            out["logvar"][a:b] = torch.where(has[:, None], lv_f, lv_i).cpu().numpy()
    return out


# --------------------------------------------------------------------------- clustering and selection

def density_select(gain: np.ndarray, assign: np.ndarray, budget: int, lam: float, mix: float,
                   rank: np.ndarray | None = None, selectable: np.ndarray | None = None) -> np.ndarray:
    """Pool rows by the density-aware allocation over clusters `assign`: per-cluster budgets by the exact
    greedy (`allocate`, shares from cluster sizes by `target_shares`), the best rows of each cluster;
    ordered by gain (highest first). Within equal gains `rank` orders rows (lower first; default: the
    row). Only `selectable` rows are candidates; cluster sizes count them."""
    gain = np.asarray(gain, dtype=np.float64)
    rows = np.arange(len(gain))
    rank = rows if rank is None else np.asarray(rank)
    cand = rows if selectable is None else rows[selectable]
    k = int(assign.max()) + 1
    by_cluster = [cand[assign[cand] == c] for c in range(k)]
    ranked = [m[np.lexsort((rank[m], -gain[m]))] for m in by_cluster]  # per cluster: gain descending, then rank
    shares = target_shares(np.array([len(m) for m in by_cluster]), mix)
    counts = allocate([gain[r] for r in ranked], shares, budget, lam)
    chosen = np.concatenate([r[:b] for r, b in zip(ranked, counts)]).astype(np.int64)
    return chosen[np.lexsort((rank[chosen], -gain[chosen]))]


def density_weight(gain: np.ndarray, budget: int, lam: float) -> float:
    """λ' = λ × the sum of the B largest gains, so that λ is unitless (choice); λ itself when those are
    all zero (then only the penalty decides, and any positive weight gives the same allocation)."""
    scale = float(np.sort(np.asarray(gain, dtype=np.float64))[::-1][:budget].sum())
    return lam * scale if scale > 0 else lam


def select_ascmr(gain: np.ndarray, rep: np.ndarray, budget: int, clusters: int, lam: float, mix: float,
                 seed: int, selectable: np.ndarray | None = None) -> np.ndarray:
    """Pool rows to annotate: k-means on the fused representation `rep`, per-cluster budgets by the
    exact greedy allocation, the most informative rows of each cluster; ordered by gain (highest
    first, ties: lower row). λ = 0 is the ablation without the density term."""
    _, assign = kmeans(rep, min(clusters, len(rep)), seed)
    return density_select(gain, assign, budget, lam, mix, selectable=selectable)


# --------------------------------------------------------------------------- strategies

ASCMR_STRATEGIES = ("ascmr", "ascmr-no-inter", "ascmr-no-density", "bald", "entropy")


@dataclass
class AscmrConfig:
    clusters: int = 20
    lam: float = 1.0  # unitless: multiplied by the sum of the B largest gains (choice)
    mix: float = 0.5  # target shares halfway between proportional and uniform (choice)
    samples: int = 8
    seed: int = 0

    def check(self) -> "AscmrConfig":
        """The config with its values checked (bad values are one-line AlselErrors)."""
        if self.clusters < 1 or self.samples < 1:
            raise AlselError(f"--clusters and --samples must be at least 1, got {self.clusters} and {self.samples}")
        if not (np.isfinite(self.lam) and self.lam >= 0):
            raise AlselError(f"--lambda must be a finite number >= 0, got {self.lam}")
        if not 0 <= self.mix <= 1:
            raise AlselError(f"--density-mix {self.mix}: expected a number in [0, 1]")
        return self


def gains_for(strategy: str, info: dict[str, np.ndarray]) -> np.ndarray:
    """The per-item gain of an ASCMR-family strategy from its uncertainty terms (intra, inter, entropy)."""
    if strategy in ("ascmr", "ascmr-no-density"):
        return info["intra"] + info["inter"]
    if strategy in ("ascmr-no-inter", "bald"):
        return info["intra"]
    if strategy == "entropy":
        return info["entropy"]
    raise AlselError(f"--strategy {strategy!r}: expected one of {', '.join(ASCMR_STRATEGIES)}")


def choose_rows(strategy: str, head, images: np.ndarray, texts: np.ndarray, text_image: np.ndarray, budget: int,
                config: AscmrConfig, device, selectable: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows chosen, most wanted first; the gain of every row; the informativeness terms of every row)
    for pool pairs given as arrays or a store's readers; only `selectable` rows are chosen.
    Density-aware strategies (ascmr, ascmr-no-inter) cluster the fused representation; the others take
    the B largest gains (ties: lower row)."""
    head.to(device)  # the head's weights where the rows go (a head file loads on the CPU)
    info = informativeness(head, images, texts, text_image, device, config.samples, config.seed)
    gain = gains_for(strategy, info)
    if strategy in ("ascmr", "ascmr-no-inter"):
        lam = config.lam * float(np.sort(gain)[::-1][:budget].sum())
        rows = select_ascmr(gain, info["mu"], budget, config.clusters, lam, config.mix, config.seed, selectable)
    else:
        order = np.lexsort((np.arange(len(gain)), -gain))
        if selectable is not None:
            order = order[selectable[order]]
        rows = order[:budget].astype(np.int64)
    return rows, gain, info
