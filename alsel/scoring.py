"""Hard-negative scores of pool items (SPEC §3).

c_j(u) = s(u, t_j) - ξ_j for a pool image u (select images), c_j(v) = s(x_i(j), v) - ξ_j for a pool
text v (select texts).  count(u) = #{j : c_j(u) > 0};  counting: score = count;
surplus: score = Σ_j max(0, c_j(u)).  One sweep over the pool with bias -ξ folded into the matmul.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import AlselError
from .store import Embeddings, Paired, Store, pool_fingerprint, write_h5
from .stream import collect, sweep, to_device
from .thresholds import Thresholds

WEIGHTS = ("surplus", "counting")


class HingeSum:
    """Reducer over S = s - ξ: per row, the number and the sum of the positive entries."""

    def init(self, n, r0):
        return None

    def update(self, state, s, r0, c0):
        s.clamp_(min=0)
        count = torch.count_nonzero(s, dim=1)
        surplus = s.sum(dim=1).double()  # float32 (pairwise) within a block, float64 across blocks
        if state is None:
            return count, surplus
        return state[0] + count, state[1] + surplus

    def finish(self, state):
        return state


def anchors(paired: Paired, select: str) -> np.ndarray:
    """Row j is what a pool item is compared with for pair j: t_j (select images) or x_i(j) (texts)."""
    return paired.texts if select == "images" else paired.images[paired.text_image]


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' with 0 <= i < n (0-based, like $SLURM_ARRAY_TASK_ID with --array=0-(n-1))."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise AlselError(f"--shard {text!r}: expected i/n, e.g. 0/4 (0-based index i < n)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise AlselError(f"--shard {text!r}: need 0 <= i < n (0-based: shards of 4 are 0/4 .. 3/4)")
    return i, n


def shard_range(i: int, n: int, size: int) -> tuple[int, int]:
    """Contiguous rows [i*N//n, (i+1)*N//n) of a pool of N rows."""
    return i * size // n, (i + 1) * size // n


def score_rows(pool: Embeddings, paired: Paired, th: Thresholds, weight: str, device: torch.device,
               start: int = 0, stop: int | None = None, chunk_size: int | None = None,
               progress: Callable[[int], None] | None = None, transform=None) -> tuple[np.ndarray, np.ndarray]:
    """(count int64, score float32) for pool rows [start, stop); `transform`: the head of the pool side."""
    if weight not in WEIGHTS:
        raise AlselError(f"--weight {weight!r}: expected surplus or counting")
    stop = pool.n if stop is None else stop
    if stop <= start:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    resident = to_device(anchors(paired, th.params.select), device)
    bias = torch.from_numpy(-th.xi.astype(np.float32)).to(device)
    count, surplus = collect(sweep(pool, resident, HingeSum(), device=device, bias=bias, transform=transform,
                                   start=start, stop=stop, chunk_size=chunk_size, progress=progress))
    score = count.astype(np.float32) if weight == "counting" else surplus.astype(np.float32)
    return count.astype(np.int64), score


@dataclass
class ScoreResult:
    rows: np.ndarray
    ids: np.ndarray
    count: np.ndarray
    score: np.ndarray
    attrs: dict


def score_pool(pool_store: Store, paired: Paired, th: Thresholds, weight: str, device: torch.device,
               shard: tuple[int, int] = (0, 1), chunk_size: int | None = None,
               progress: Callable[[int], None] | None = None, head=None) -> ScoreResult:
    """Score one shard of the pool's `select` side; with `head`, `paired` must be through it too."""
    select = th.params.select
    pool = pool_store.side(select)
    if pool.n == 0:
        raise AlselError(f"{pool_store.path}: the pool is empty (/{select}/emb has 0 rows)")
    a, b = shard_range(*shard, pool.n)
    if (head.fingerprint() if head is not None else "none") != th.head:
        raise AlselError(f"{pool_store.path}: the pool and the thresholds must pass through the same head")
    transform = head.transform("image" if select == "images" else "text") if head is not None else None
    count, score = score_rows(pool, paired, th, weight, device, a, b, chunk_size, progress, transform)
    ids = pool_store.ids(select)[a:b]
    attrs = dict(th.params.as_attrs(), weight=weight, shard=f"{shard[0]}/{shard[1]}", pool_size=pool.n,
                 pool_fingerprint=pool_fingerprint(pool, pool_store.model), pool_path=pool_store.path,
                 paired_fingerprint=th.paired_fingerprint, thresholds_fingerprint=th.fingerprint,
                 model=paired.model, head=th.head)
    return ScoreResult(np.arange(a, b, dtype=np.int64), ids, count, score, attrs)


def save_scores(out, res: ScoreResult, inputs: tuple = (), created_by: str | None = None) -> None:
    write_h5(out, "scores", {"row": res.rows, "id": res.ids, "count": res.count, "score": res.score},
             res.attrs, inputs=inputs, created_by=created_by)
