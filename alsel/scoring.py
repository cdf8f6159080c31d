"""Hard-negative scores of pool items (SPEC §3).

c_j(u) = s(u, t_j) - ξ_j for a pool image u (select images), c_j(v) = s(x_i(j), v) - ξ_j for a pool
text v (select texts).  count(u) = #{j : c_j(u) > 0};  counting: score = count;
surplus: score = Σ_j max(0, c_j(u));  closest(u) = max_j c_j(u).  One sweep over the pool with bias
-ξ folded into the matmul. A pool item whose id is an id of the paired store's same side is already
paired: paired = 1, count 0, score 0, closest -inf (never selected).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from ._lazy import torch  # imported on first use (fast start)

from .errors import AlselError
from .rounding import precision_name
from .store import Embeddings, Paired, Store, pool_fingerprint
from .h5file import write_h5
from .output import check_output, check_space, output_lock
from .stream import collect, sweep, to_device
from .thresholds import Thresholds

WEIGHTS = ("surplus", "counting")


class HingeSum:
    """Reducer over S = s - ξ: per row, the number and the sum of the positive entries, and the
    largest entry (closest = max_j c_j)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device

    def init(self, n, r0):
        return None

    def update(self, state, s, r0, c0):
        closest = s.amax(dim=1)
        s.clamp_(min=0)
        count = torch.count_nonzero(s, dim=1)
        surplus = s.sum(dim=1).double()  # float32 (pairwise) within a block, float64 across blocks
        if state is None:
            return count, surplus, closest
        return state[0] + count, state[1] + surplus, torch.maximum(state[2], closest)

    def init_low(self, n, r0):
        return (torch.zeros(n, dtype=torch.int64, device=self.device),
                torch.zeros(n, dtype=torch.float64, device=self.device),
                torch.full((n,), -torch.inf, device=self.device))

    def update_low(self, state, tile, r0, c0):
        """Sign-form tile: approx < 0 certifies c <= 0, so only rows with some approx >= 0 are looked
        at, and only their entries with approx >= 0 are recomputed in float32; closest from those and,
        for rows with no positive value yet, from the band below each row's largest approx (both sets
        recomputed in one gather when they are small)."""
        rows, r, c = tile.sign_candidates()
        b_rows, b_r, b_c = tile.band_candidates(state[2])  # with closest before this tile: a superset
        exact = band = None
        if len(r) and len(r) <= tile.GATHER_MAX and len(b_r):
            both = tile.gathered(torch.arange(tile.approx.shape[0], device=r.device), torch.cat([rows[r], b_rows[b_r]]),
                                 torch.cat([c, b_c]))
            exact, band = both[:len(r)], both[len(r):]
        elif len(r):
            exact = tile.values(rows, r, c)
        if band is None and len(b_r):
            band = tile.gathered(b_rows, b_r, b_c)
        if band is not None:
            state[2].scatter_reduce_(0, b_rows[b_r].to(band.device), band, reduce="amax")
        if exact is not None:
            at = rows[r].to(exact.device)
            state[2].scatter_reduce_(0, at, exact, reduce="amax")
            vals = exact.clamp_(min=0)
            if vals.device.type == "cpu":  # sequential, hence deterministic
                state[0].index_add_(0, at, (vals > 0).long())
                state[1].index_add_(0, at, vals.double())
            else:  # CUDA's float index_add_ is atomic (order varies): sum a dense tile instead
                dense = torch.zeros(len(rows), tile.approx.shape[1], device=vals.device)
                dense[r, c] = vals
                state[0][rows] += torch.count_nonzero(dense, dim=1)
                state[1][rows] += dense.sum(dim=1).double()
        return state

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


def hinge_sweep(pool: Embeddings, paired: Paired, th: Thresholds, device: torch.device, start: int, stop: int,
                chunk_size: int | None = None, progress=None, transform=None, precision: torch.dtype | None = None):
    """The sweep of SPEC §3's c_j over pool rows [start, stop): yields (r0, r1, (count, surplus, closest))."""
    resident = to_device(anchors(paired, th.params.select), device)
    bias = torch.from_numpy(-th.xi.astype(np.float32)).to(device)
    return sweep(pool, resident, HingeSum(device), device=device, bias=bias, transform=transform, start=start,
                 stop=stop, chunk_size=chunk_size, progress=progress, precision=precision)


def weigh(count: np.ndarray, surplus: np.ndarray, closest: np.ndarray, weight: str
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count int64, score float32, closest float32) from a hinge sweep's results."""
    score = count.astype(np.float32) if weight == "counting" else surplus.astype(np.float32)
    return count.astype(np.int64), score, closest.astype(np.float32)


def score_rows(pool: Embeddings, paired: Paired, th: Thresholds, weight: str, device: torch.device,
               start: int = 0, stop: int | None = None, chunk_size: int | None = None,
               progress: Callable[[int], None] | None = None, transform=None,
               precision: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count int64, score float32, closest float32) for pool rows [start, stop); `transform`: the head
    of the pool side; `precision` bfloat16/float16: the exact low-precision path (same answers within
    SPEC §3)."""
    if weight not in WEIGHTS:
        raise AlselError(f"--weight {weight!r}: expected surplus or counting")
    stop = pool.n if stop is None else stop
    if stop <= start:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return weigh(*collect(hinge_sweep(pool, paired, th, device, start, stop, chunk_size, progress, transform,
                                      precision)), weight)


@dataclass
class ScoreResult:
    rows: np.ndarray
    ids: np.ndarray | None  # UTF-8 bytes, as h5py reads them (written to /id as text); None: not kept
    count: np.ndarray
    score: np.ndarray
    attrs: dict
    closest: np.ndarray | None = None
    paired: np.ndarray | None = None  # uint8: 1 = already paired (count 0, score 0, closest -inf)
    resumed: int = 0  # rows an earlier, stopped run had scored (score_to_file with resume): not in this run's rate
    skipped: np.ndarray | None = None  # uint8: 1 = skipped by annotators (SPEC §8), never selected again

    def leave_out_paired(self, mask: np.ndarray, skipped: np.ndarray | None = None) -> "ScoreResult":
        """Mark already-paired rows (SPEC §3) and rows annotators skipped (SPEC §8); clear their figures."""
        self.paired = mask.astype(np.uint8)
        self.skipped = None if skipped is None or not skipped.any() else skipped.astype(np.uint8)
        out = mask | (skipped if skipped is not None else False)
        self.count[out], self.score[out], self.closest[out] = 0, 0, -np.inf
        self.attrs["paired_left_out"] = int(mask.sum())
        self.attrs["skipped_left_out"] = int(0 if skipped is None else (skipped & ~mask).sum())
        return self


def scores_attrs(pool_store: Store, paired: Paired, th: Thresholds, weight: str, shard: tuple[int, int],
                 head=None, precision: torch.dtype | None = None) -> dict:
    """The scores file's attributes (SPEC §1); checks the head matches the thresholds'."""
    if weight not in WEIGHTS:
        raise AlselError(f"--weight {weight!r}: expected surplus or counting")
    if (head.fingerprint() if head is not None else "none") != th.head:
        raise AlselError(f"{pool_store.path}: the pool and the thresholds must pass through the same head")
    pool = pool_store.side(th.params.select)
    root = str(pool_store.attrs.get("image_root", "")) if th.params.select == "images" else ""
    return dict(th.params.as_attrs(), **({"image_root": root} if root else {}), weight=weight, shard=f"{shard[0]}/{shard[1]}", pool_size=pool.n,
                pool_fingerprint=pool_fingerprint(pool, pool_store.model), pool_path=pool_store.path,
                paired_fingerprint=th.paired_fingerprint, thresholds_fingerprint=th.fingerprint,
                model=paired.model, head=th.head, precision=precision_name(precision))


def score_pool(pool_store: Store, paired: Paired, th: Thresholds, weight: str, device: torch.device,
               shard: tuple[int, int] = (0, 1), chunk_size: int | None = None,
               progress: Callable[[int], None] | None = None, head=None,
               precision: torch.dtype | None = None, ids=None) -> ScoreResult:
    """Score one shard of the pool's `select` side; with `head`, `paired` must be through it too. `ids`:
    shard_ids' answer where the caller has it (a selection's one read of the ids; the result's ids are
    None where it did not keep them), else read here, before the work."""
    select = th.params.select
    pool = pool_store.side(select)
    if pool.n == 0:
        raise AlselError(f"{pool_store.path}: the pool is empty (/{select}/emb has 0 rows)")
    attrs = scores_attrs(pool_store, paired, th, weight, shard, head, precision)
    a, b = shard_range(*shard, pool.n)
    ids = ids if ids is not None else shard_ids(pool_store, paired, select, shard)
    if ids.paired is None or len(ids.paired) != b - a:
        raise AlselError(f"{pool_store.path}: ids of {b - a} rows needed with their paired mask (a bug)")
    transform = head.transform("image" if select == "images" else "text") if head is not None else None
    count, score, closest = score_rows(pool, paired, th, weight, device, a, b, chunk_size, progress, transform,
                                       precision)
    res = ScoreResult(np.arange(a, b, dtype=np.int64), ids.ids, count, score, attrs, closest)
    return res.leave_out_paired(ids.paired, pool_store.flags(select, "skipped")[a:b])


def shard_ids(pool_store: Store, paired: Paired, select: str, shard: tuple[int, int]):
    """The shard's pool ids (UTF-8 bytes) and which are already paired, from the one read of the pool's ids
    that also checks all of them (valid, unique): a command makes it before its work (Store.scan_ids)."""
    a, b = shard_range(*shard, pool_store.side(select).n)
    return pool_store.scan_ids(select, a, b, paired.id_set(select) or set(), keep=True)


def save_scores(out, res: ScoreResult, inputs: tuple = (), created_by: str | None = None) -> None:
    """Write a scores file (SPEC layout: /row, /id, /count, /score, /closest, /paired, and /skipped where
    annotators skipped pool items) atomically."""
    extra = {"skipped": res.skipped} if res.skipped is not None else {}
    write_h5(out, "scores", {"row": res.rows, "id": res.ids, "count": res.count, "score": res.score,
                             "closest": res.closest, "paired": res.paired, **extra}, res.attrs, inputs=inputs,
             created_by=created_by)


# --------------------------------------------------------------------------- resumable scoring


SCORE_BYTES_PER_ROW = 72  # OUT.partial (count, score, closest), OUT (row, id, count, score, closest, paired)


class _PartialScores:
    """OUT.partial: count, score and closest rows of the chunks done so far, and how many rows that is."""

    def __init__(self, path: str, settings: dict, resume: bool):
        from .output import open_partial

        def create(f):
            f.create_dataset("count", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(65536,))
            for name in ("score", "closest"):
                f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(65536,))
            f.create_dataset("done", data=np.zeros(1, np.int64))

        self.path = path
        self.f, resumed = open_partial(path, settings, resume, create)
        if resumed:  # drop rows written after the last recorded chunk
            done = self.done
            for name in self.NAMES:
                self.f[name].resize(done, axis=0)

    @property
    def done(self) -> int:
        return int(self.f["done"][0])

    NAMES = ("count", "score", "closest")

    def append(self, count: np.ndarray, score: np.ndarray, closest: np.ndarray) -> None:
        n = self.done
        for name, arr in zip(self.NAMES, (count, score, closest)):
            self.f[name].resize(n + len(arr), axis=0)
            self.f[name][n:] = arr
        self.f.flush()
        self.f["done"][0] = n + len(count)  # only after the rows are on disk
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def score_to_file(out: str, pool_store: Store, paired: Paired, th: Thresholds, weight: str, device: torch.device,
                  shard: tuple[int, int] = (0, 1), chunk_size: int | None = None, progress=None, head=None,
                  resume: bool = False, should_stop: Callable[[], bool] | None = None, inputs: tuple = (),
                  created_by: str | None = None, precision: torch.dtype | None = None, ids=None) -> ScoreResult:
    """score_pool, streamed chunk by chunk into OUT.partial and finished into OUT; `ids`: shard_ids' answer
    where the caller made it already (else made here, before the work).

    `resume` continues from the last recorded chunk (same settings and chunk size, hence the same
    tiles and bit-identical results); `should_stop()` is polled after every chunk: when it is true,
    progress is on disk and Interrupted is raised.
    """
    from .errors import Interrupted
    from .stream import auto_chunk_size, tile_layout

    attrs = scores_attrs(pool_store, paired, th, weight, shard, head, precision)
    select = th.params.select
    pool = pool_store.side(select)
    if pool.n == 0:
        raise AlselError(f"{pool_store.path}: the pool is empty (/{select}/emb has 0 rows)")
    a, b = shard_range(*shard, pool.n)
    ids = ids if ids is not None else shard_ids(pool_store, paired, select, shard)
    chunk_size = chunk_size or auto_chunk_size(pool.d, device)
    # what fixes the bits of the results: a resumed run must use the same
    settings = dict(attrs, layout=tile_layout(chunk_size, device), partial=",".join(_PartialScores.NAMES))
    settings.pop("pool_path")
    check_output(out, inputs)
    check_space(out, (b - a) * SCORE_BYTES_PER_ROW)
    with output_lock(out):  # one writer for OUT and OUT.partial for the whole run
        part = _PartialScores(out + ".partial", settings, resume)
        try:
            done = part.done
            if progress is not None and done:  # rows of the stopped run: `progress.resumed` keeps them out of rates
                getattr(progress, "resumed", progress)(done)
            if a + done < b:
                transform = head.transform("image" if select == "images" else "text") if head is not None else None
                for _, _, results in hinge_sweep(pool, paired, th, device, a + done, b, chunk_size, progress,
                                                 transform, precision):
                    part.append(*weigh(*results, weight))
                    if should_stop is not None and should_stop() and part.done < b - a:
                        raise Interrupted(f"{part.path} holds {part.done:,} of {b - a:,} rows; run the same "
                                          f"command with --resume")
            res = ScoreResult(np.arange(a, b, dtype=np.int64), ids.ids, part.f["count"][:], part.f["score"][:], attrs,
                              part.f["closest"][:], resumed=done).leave_out_paired(
                                  ids.paired, pool_store.flags(select, "skipped")[a:b])
        except AlselError:  # bad input: nothing to resume from, nothing left behind
            part.close()
            with contextlib.suppress(OSError):
                os.unlink(part.path)
            raise
        finally:
            part.close()
        save_scores(out, res, inputs=inputs, created_by=created_by)
        os.unlink(part.path)
        return res
