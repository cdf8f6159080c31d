"""Seeded k-means over rows of any size, in bounded memory (ASCMR's allocation, hn-density, TypiClust,
ProbCover's purity).

Centers are fitted on a seeded sample of at most KMEANS_SAMPLE rows (k-means++ seeding, then Lloyd
steps, float64); every row is then assigned to its nearest center by the streaming sweep:
argmin_c ||x - c||² = argmax_c (x·c - ||c||²/2), the bias folded into the matmul, so the pool is read
in chunks and no N × k matrix exists beyond a tile. Rows come from an array or a store (through a head
when `transform` is given).
"""

from __future__ import annotations

import numpy as np
from ._lazy import torch  # imported on first use (fast start)

from .errors import AlselError
from .stream import ArrayRows, Rows, collect, sweep, to_device

KMEANS_SAMPLE = 65536  # k-means++ seeding and Lloyd steps run on a sample this large at most
KMEANS_ITERS = 25


class ArgMax:
    """Reducer: per row, the column with the largest value (ties: the lower column)."""

    def init(self, n, r0):
        return None

    def update(self, state, s, r0, c0):
        value, index = s.max(dim=1)  # the first maximal column of the block
        index = index + c0
        if state is None:
            return value, index
        better = value > state[0]  # strict: an earlier block keeps a tie
        return torch.where(better, value, state[0]), torch.where(better, index, state[1])

    def finish(self, state):
        return (state[1],)


def as_rows(points) -> Rows:
    """Rows (anything with load) as they are, an array as ArrayRows."""
    return points if hasattr(points, "load") else ArrayRows(np.asarray(points, dtype=np.float32))


def take(points, rows: np.ndarray, device: torch.device | None = None, transform=None) -> np.ndarray:
    """float32 rows `rows` (sorted ascending) of an array or a Rows source, through `transform` (on
    `device`, default the CPU)."""
    src = as_rows(points)
    x = torch.from_numpy(np.ascontiguousarray(src.take(np.asarray(rows, dtype=np.int64)), dtype=np.float32))
    if transform is None:
        return x.numpy()
    with torch.no_grad():
        return transform(x.to(device or "cpu")).cpu().numpy()


FIT_BLOCK = 4096  # sample rows assigned at a time in a Lloyd step
SEED_SAMPLE = 20  # k-means++ seeding looks at up to this many sampled points per center (at least 4,096)


def fit_centers(sample: np.ndarray, k: int, rng: np.random.Generator, iters: int = KMEANS_ITERS,
                device: torch.device | None = None) -> np.ndarray:
    """k-means++ seeding on a seeded subsample of `sample` (SEED_SAMPLE points per center), then Lloyd
    steps on all of it: assignments by float32 matrix products on the device (argmax of x·c - ||c||²/2,
    ties: the lower center), centers as the means of their points (summed in float32, on the CPU in row
    order); an empty cluster keeps its center. Returns the centers as float64."""
    device = device or torch.device("cpu")
    s = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).to(device)
    n = len(s)
    m = min(n, max(4096, SEED_SAMPLE * k))
    seed_rows = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    x = s[torch.from_numpy(seed_rows).to(device)]
    sq = (x * x).sum(dim=1)
    first = int(rng.integers(m))
    chosen = [first]
    d2 = (sq - 2 * (x @ x[first]) + sq[first]).clamp_(min=0).double()
    for _ in range(1, k):
        total = float(d2.sum())
        p = (d2 / total).cpu().numpy() if total > 0 else None
        nxt = int(rng.choice(m, p=p / p.sum())) if p is not None else int(rng.integers(m))
        chosen.append(nxt)
        d2 = torch.minimum(d2, (sq - 2 * (x @ x[nxt]) + sq[nxt]).clamp_(min=0).double())
    c = x[torch.tensor(chosen, device=device)].double()
    a = torch.empty(n, dtype=torch.int64, device=device)
    for _ in range(iters):
        c32 = c.float()
        bias = -0.5 * (c32 * c32).sum(dim=1)
        for r in range(0, n, FIT_BLOCK):  # blocks: the products of a block stay in cache for the argmax
            a[r:r + FIT_BLOCK] = torch.argmax(torch.addmm(bias, s[r:r + FIT_BLOCK], c32.T), dim=1)
        size = torch.bincount(a, minlength=k).double()
        sums = torch.zeros((k, s.shape[1]), dtype=torch.float32, device=device).index_add_(0, a, s).double()
        new = torch.where(size[:, None] > 0, sums / size.clamp(min=1)[:, None], c)
        if torch.allclose(new, c, rtol=0, atol=1e-10):
            break
        c = new
    return c.cpu().numpy()


def assign(points, centers: np.ndarray, device: torch.device | None = None, transform=None,
           chunk_size: int | None = None) -> np.ndarray:
    """Nearest center of every row (streamed; ties: the lower center)."""
    device = device or torch.device("cpu")
    c = np.asarray(centers, dtype=np.float64)
    bias = torch.from_numpy((-0.5 * (c ** 2).sum(axis=1)).astype(np.float32)).to(device)
    (index,) = collect(sweep(as_rows(points), to_device(c, device), ArgMax(), device=device, bias=bias,
                             transform=transform, chunk_size=chunk_size))
    return index.astype(np.int64)


def kmeans(points, k: int, seed: int = 0, sample: int = KMEANS_SAMPLE, iters: int = KMEANS_ITERS,
           device: torch.device | None = None, transform=None, chunk_size: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(centers (k, d) float64, assignment (N,) int64) of an array or a Rows source (e.g. a store's
    Embeddings, through `transform`): centers from a seeded sample of at most `sample` rows, then every
    row assigned by the sweep."""
    src = as_rows(points)
    centers, _, _ = fit_on_sample(src, k, seed, sample, iters, device, transform)
    return centers, assign(src, centers, device, transform, chunk_size)


def fit_on_sample(points, k: int, seed: int = 0, sample: int = KMEANS_SAMPLE, iters: int = KMEANS_ITERS,
                  device: torch.device | None = None, transform=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centers, the sample's rows, the sample's points): k-means fitted on a seeded sample of at most
    `sample` rows, the same in every process that asks with the same seed (the shards of a selection)."""
    src = as_rows(points)
    n = src.n
    if not 1 <= k <= n:
        raise AlselError(f"--clusters {k}: expected 1..{n} (the number of points)")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    x = take(src, picked, device, transform)
    return fit_centers(x, k, rng, iters, device), picked, x
