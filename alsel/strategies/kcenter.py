"""k-center greedy (SPEC §3's core-set baseline) and its composable form (SPEC §10).

From the similarity m(u) = max over paired items x of s(u, x) (d(u) = √(2 − 2 m(u)) for unit rows, so the
farthest item is the one of smallest m), B times take the item of smallest m (ties: the lower row) and
raise every m to its similarity with the new center. Memory O(N_u), never an N_u × N_u matrix.

The state lives on the device as torch tensors and each pick is an argmin and one matrix-vector product
there: no host round trip per pick (the picks are read back at the end). Rows that fit in the memory
budget (POOL_FRACTION of the available host memory (stream.available_host_bytes), or of free GPU memory) are held in float32 in the current space;
otherwise every pick streams them from the store again.

Composable core-sets (Malkomes, Chen, Moseley, Krause, NeurIPS 2015): every shard runs the greedy seeded
with the paired set for PER_SHARD × B picks and keeps them with their embeddings, their m at the start and
its own covering radius r_i; the merge runs the same greedy over the union of the shards' candidates.
Every pool item lies within r_i of the paired set or a candidate of its shard, and every candidate within
r_union of the paired set or a merged pick, so the merged selection covers the pool within
r_union + max_i r_i (written into the selection as `radius_bound`), which is at most 4 × the optimal
radius, so at most 4 × the single-process greedy's. With one shard the merge gives the single-process
selection exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._lazy import torch  # imported on first use (fast start)
from ..stream import MaxSim, Rows, available_host_bytes, collect, sweep, to_device

PER_SHARD = 2  # a shard keeps this many times B candidates (more than B tightens the merged radius)
POOL_FRACTION = 0.4  # rows are held in memory (float32) when they take at most this share of available memory


def distance_from_sim(s: np.ndarray) -> np.ndarray:
    """||u - x|| = sqrt(2 - 2 s) for unit vectors."""
    return np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(s, dtype=np.float64), 0.0))


@dataclass
class KCenter:
    rows: np.ndarray  # picks, in pick order (rows of the range given)
    dist: np.ndarray  # d at pick time
    start_sim: np.ndarray  # m of each pick before any pick (its similarity to the nearest paired item)
    radius: float  # max d over the items that could be picked, after the last pick (the covering radius)
    emb: np.ndarray | None = None  # the picks' rows in the current space (float32), when asked for


def memory_budget(device: torch.device) -> int:
    """Bytes of rows the greedy may hold on `device`."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * POOL_FRACTION)
    return int(available_host_bytes() * POOL_FRACTION)


def hold(rows: Rows, device: torch.device, transform=None, chunk_size: int | None = None) -> torch.Tensor:
    """All rows of `rows` in float32 on the device, in the current space (through `transform`), written
    chunk by chunk into one tensor (concatenating the chunks would need twice the memory at its peak)."""
    out = None
    step = chunk_size or 65536
    for a in range(0, rows.n, step):
        b = min(rows.n, a + step)
        x = rows.load(a, b).to(device)
        with torch.no_grad():
            x = transform(x) if transform is not None else x
        if out is None:
            out = torch.empty((rows.n, x.shape[1]), dtype=torch.float32, device=device)
        out[a:b] = x
        if hasattr(rows, "release"):
            rows.release(a, b)
    return out if out is not None else torch.zeros((0, rows.d), device=device)


def kcenter_greedy(pool: Rows, centers: np.ndarray, budget: int, device: torch.device,
                   chunk_size: int | None = None, progress: Callable[[int], None] | None = None,
                   transform=None, exclude: np.ndarray | None = None, held: torch.Tensor | None = None,
                   keep_emb: bool = False, precision: torch.dtype | None = None) -> KCenter:
    """k-center greedy over the rows of `pool` (or `held`, the same rows already on the device in the
    current space) from `centers` (float32 unit rows in the current space); `exclude` rows are never
    taken; `keep_emb`: also return the picks' rows in the current space; `precision`: the distances to the
    centers by the exact low-precision path (MaxSim's). See the module docstring."""
    device = torch.device(device)
    n = pool.n if held is None else len(held)
    budget = min(budget, n - (0 if exclude is None else int(np.asarray(exclude).sum())))
    if held is None and n * (centers.shape[1] if len(centers) else pool.d) * 4 <= memory_budget(device):
        held = hold(pool, device, transform, chunk_size)
    if held is not None:
        (m0,) = collect(sweep(_Held(held), to_device(centers, device), MaxSim(), device=device, chunk_size=chunk_size,
                              precision=precision))
    else:
        (m0,) = collect(sweep(pool, to_device(centers, device), MaxSim(), device=device, transform=transform,
                              chunk_size=chunk_size, precision=precision))
    m = torch.from_numpy(np.ascontiguousarray(m0, dtype=np.float32)).to(device)
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    if exclude is not None:
        taken |= torch.from_numpy(np.asarray(exclude, dtype=bool)).to(device)
    inf = torch.tensor(float("inf"), device=device)
    picks = torch.empty(budget, dtype=torch.int64, device=device)
    at_pick = torch.empty(budget, dtype=torch.float32, device=device)
    for b in range(budget):
        u = torch.argmin(torch.where(taken, inf, m))  # the first smallest: the lower row on ties
        picks[b] = u
        at_pick[b] = m[u]
        taken[u] = True
        if held is not None:
            s_u = held @ held[u]
        else:
            r = int(u)  # streaming: the new center is read from the store (one sync per pick)
            c = pool.load(r, r + 1).to(device)
            with torch.no_grad():
                c = transform(c) if transform is not None else c
            (s,) = collect(sweep(pool, c, MaxSim(), device=device, transform=transform, chunk_size=chunk_size))
            s_u = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)).to(device)
        m = torch.maximum(m, s_u)
        if progress is not None:
            progress(1)
    rows = picks.cpu().numpy()
    left = torch.where(taken, inf, m)
    low = float(left.min()) if budget < n and bool((~taken).any()) else 1.0
    emb = None
    if keep_emb:
        if held is not None:
            emb = held[picks].cpu().numpy()
        else:
            order = np.argsort(rows)
            x = torch.from_numpy(pool.take(rows[order])).to(device)
            with torch.no_grad():
                x = transform(x) if transform is not None else x
            emb = np.empty((len(rows), x.shape[1]), np.float32)
            emb[order] = x.float().cpu().numpy()
    return KCenter(rows, distance_from_sim(at_pick.cpu().numpy()).astype(np.float32), np.asarray(m0)[rows],
                   float(distance_from_sim(np.float32(low))), emb)


class _Held:
    """Rows already on the device as a Rows source for one sweep."""

    def __init__(self, x: torch.Tensor):
        self.x, self.n, self.d = x, x.shape[0], x.shape[1]

    def load(self, start: int, stop: int, out=None):
        return self.x[start:stop]

    def take(self, rows):
        return self.x[torch.as_tensor(rows, device=self.x.device)].cpu().numpy()

    def release(self, start: int, stop: int) -> None:
        pass


def merge_candidates(emb: np.ndarray, start_sim: np.ndarray, rows: np.ndarray, budget: int,
                     device: torch.device) -> KCenter:
    """The greedy over the union of the shards' candidates (embeddings in the current space, their m
    before any pick, their pool rows): the merged picks as pool rows, d at pick time, and r_union."""
    order = np.argsort(rows, kind="stable")  # the lower pool row wins ties, as in one process
    x = torch.from_numpy(np.ascontiguousarray(emb[order], dtype=np.float32)).to(device)
    m = torch.from_numpy(np.ascontiguousarray(start_sim[order], dtype=np.float32)).to(device)
    taken = torch.zeros(len(order), dtype=torch.bool, device=device)
    inf = torch.tensor(float("inf"), device=device)
    picks, at_pick = [], []
    for _ in range(min(budget, len(order))):
        u = torch.argmin(torch.where(taken, inf, m))
        picks.append(u)
        at_pick.append(m[u])
        taken[u] = True
        m = torch.maximum(m, x @ x[u])
    left = torch.where(taken, inf, m)
    low = float(left.min()) if bool((~taken).any()) else 1.0
    picked = order[torch.stack(picks).cpu().numpy()] if picks else np.zeros(0, np.int64)
    return KCenter(rows[picked], distance_from_sim(torch.stack(at_pick).cpu().numpy()).astype(np.float32)
                   if at_pick else np.zeros(0, np.float32), start_sim[picked], float(distance_from_sim(np.float32(low))))
