"""k-center greedy (SPEC §3's core-set baseline): from the distance of every pool item to its nearest paired
item, B times take the farthest and lower every distance by the distance to it. Memory O(N_u), never an
N_u × N_u matrix."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .._lazy import torch  # imported on first use (fast start)
from ..stream import MaxSim, Rows, collect, sweep, to_device

def distance_from_sim(s: np.ndarray) -> np.ndarray:
    """||u - x|| = sqrt(2 - 2 s) for unit vectors."""
    return np.sqrt(np.maximum(2.0 - 2.0 * s.astype(np.float64), 0.0))


def kcenter_greedy(pool: Rows, centers: np.ndarray, budget: int, device: torch.device,
                   chunk_size: int | None = None, progress: Callable[[int], None] | None = None,
                   transform=None, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy: d(u) = min_x ||u - x|| over `centers`; B times take argmax d (ties: lower row)
    and lower d by the distance to the new center. Returns (rows, d at pick time). Memory O(N_u).
    `transform` maps pool rows into the centers' space (a head); `exclude` rows are never taken."""
    (s,) = collect(sweep(pool, to_device(centers, device), MaxSim(), device=device, transform=transform,
                         chunk_size=chunk_size))
    d = distance_from_sim(s)
    chosen = np.zeros(pool.n, dtype=bool) if exclude is None else np.asarray(exclude, dtype=bool).copy()
    rows = np.empty(budget, np.int64)
    dist = np.empty(budget, np.float32)
    for b in range(budget):
        d_masked = np.where(chosen, -np.inf, d)
        u = int(np.argmax(d_masked))
        rows[b], dist[b] = u, d_masked[u]
        chosen[u] = True
        new_center = pool.load(u, u + 1).to(device)
        if transform is not None:
            new_center = transform(new_center)
        (s_u,) = collect(sweep(pool, new_center, MaxSim(), device=device, transform=transform,
                               chunk_size=chunk_size))
        d = np.minimum(d, distance_from_sim(s_u))
        if progress is not None:
            progress(1)
    return rows, dist
