"""The one streaming primitive: tile the pool, keep the paired side on the device, reduce each tile.

    for each chunk of pool rows (read from disk, checked, re-normalised, moved to the device):
        for each compute tile of the chunk and each block of resident columns:
            S = tile @ resident_blockᵀ (+ bias_block)        float32
            state = reducer.update(state, S, ...)
        yield reducer.finish(state)

A chunk is the I/O unit (`chunk_size` rows: sets peak memory). A compute tile times a column block
is the unit the reduction runs on: on CPU it is sized to stay in cache, which makes the reduction
nearly free next to the matmul; on CUDA tiles are large. The N_pool × N_resident matrix is never
built. Thresholds, scores, core-set distances and evaluation are all reducers over it.

With `precision` bfloat16/float16 (reducers that have `update_low`), the products are computed in
that precision and each reducer receives a `rounding.LowTile`: the cheap products plus a rigorous
bound on their error and a way to recompute any entry in float32 — so the answers stay those of
the float32 path while almost all of the work runs at the low-precision matmul rate.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Protocol

import numpy as np
from ._lazy import torch  # imported on first use (fast start)

from .errors import AlselError
from .rounding import LowResident, LowTile, unit_roundoff

CPU_TILE_ROWS = 1024
CPU_COL_BLOCK = 512
CPU_LOW_COL_BLOCK = 2048  # low precision: a 1024 x 2048 bfloat16 tile (4 MiB) amortises the candidate search
CUDA_TILE_ROWS = 8192  # an 8192 x 8192 float32 score tile: 256 MiB of GPU memory
CUDA_COL_BLOCK = 8192
DEVICES = ("auto", "cpu", "cuda")


def tile_rows_for(device: torch.device) -> int:
    """Rows of one compute tile on this device."""
    return CPU_TILE_ROWS if device.type == "cpu" else CUDA_TILE_ROWS


def _read_kib(path: str, key: str) -> int | None:
    """The value of `key` (in kB) in a /proc/meminfo-style file, in bytes; None when absent."""
    try:
        with open(path) as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name == key:
                    return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def cgroup_headroom(proc: str = "/proc", root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's memory cgroup (a SLURM job's, a container's) may still take: its limit minus
    its usage plus its inactive page cache (reclaimable); None without a limit. cgroup v2 (memory.max,
    memory.current, memory.stat inactive_file) and v1 (memory.limit_in_bytes, memory.usage_in_bytes,
    memory.stat total_inactive_file)."""
    try:
        with open(os.path.join(proc, "self", "cgroup")) as fh:
            lines = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError:
        return None
    for _, controllers, path in (x for x in lines if len(x) == 3):
        if controllers == "":  # v2
            d = os.path.join(root, path.lstrip("/"))
            limit, used = _read_int(os.path.join(d, "memory.max")), _read_int(os.path.join(d, "memory.current"))
            cache = "inactive_file"
        elif "memory" in controllers.split(","):  # v1
            d = os.path.join(root, "memory", path.lstrip("/"))
            limit, used = (_read_int(os.path.join(d, "memory.limit_in_bytes")),
                           _read_int(os.path.join(d, "memory.usage_in_bytes")))
            cache = "total_inactive_file"
        else:
            continue
        if limit is None or used is None or limit >= 1 << 60:  # no limit (v1 writes one near 2^63)
            continue
        stat = {}
        try:
            with open(os.path.join(d, "memory.stat")) as fh:
                stat = dict(line.split()[:2] for line in fh if len(line.split()) >= 2)
        except OSError:
            pass
        return max(0, limit - used + int(stat.get(cache, 0)))
    return None


def available_host_bytes(proc: str = "/proc", root: str = "/sys/fs/cgroup") -> int:
    """Host memory this process may still take, in bytes: MemAvailable (free memory plus the page cache
    the kernel can reclaim: a pool file just read sits in the cache, and MemFree alone would count it as
    used), capped by the memory cgroup's headroom where there is a limit (SLURM jobs, containers)."""
    avail = _read_kib(os.path.join(proc, "meminfo"), "MemAvailable")
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 << 30
    headroom = cgroup_headroom(proc, root)
    return avail if headroom is None else min(avail, headroom)


def auto_chunk_size(d: int, device: torch.device) -> int:
    """Pool rows per chunk from available memory: two float32 staging buffers within 2% of available host
    memory on CPU (1024..16384 rows: larger chunks only raised peak memory here), a quarter of free GPU memory on CUDA (8192..1M rows); always a
    multiple of the compute tile, so the tiles — and the results, bit for bit — do not depend on it."""
    tile = tile_rows_for(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        rows = min(max(int(free * 0.25 / (3 * 4 * d)), 8192), 1 << 20)
    else:
        rows = min(max(int(available_host_bytes() * 0.02 / (2 * 4 * d)), 1024), 16384)
    return max(tile, rows // tile * tile)


def tile_layout(chunk_size: int, device: torch.device) -> str:
    """What fixes the bits of a sweep's results: the tile rows when chunks are whole tiles."""
    tile = tile_rows_for(device)
    return f"{device.type} tiles of {tile} rows" if chunk_size % tile == 0 else f"{device.type} chunks of {chunk_size} rows"


def resolve_device(name: str = "auto") -> torch.device:
    """auto, cpu or cuda as a torch device (auto = CUDA when available); cuda without one is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise AlselError("--device cuda: no CUDA device is available (use --device cpu or auto)")
        return torch.device("cuda")
    raise AlselError(f"--device {name!r}: expected auto, cpu or cuda")


class Rows(Protocol):
    """n rows of dimension d, loaded as float32 unit rows (into a caller's buffer when given)."""

    n: int
    d: int

    def load(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [start, stop) as float32 unit rows (a tensor, in `out` when given)."""

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (sorted ascending) as float32 unit rows."""

    def release(self, start: int, stop: int) -> None:
        """Drop what rows [start, stop) hold in memory (mapped pages), once they are processed."""


class ArrayRows:
    """In-memory rows (already float32 and unit length) behind the Rows interface."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array, dtype=np.float32)
        self.n, self.d = self.array.shape

    def load(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """A view of rows [start, stop): nothing to copy."""
        return torch.from_numpy(self.array[start:stop])  # a view: nothing to copy

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as the array itself."""
        return self.array[start:stop]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows."""
        return self.array[rows]

    def release(self, start: int, stop: int) -> None:
        """Nothing to release: the rows are in memory."""
        pass


class ConcatRows:
    """Several Rows sources one after the other (e.g. the paired items, then the pool), as one."""

    def __init__(self, *parts):
        self.parts = parts
        self.starts = np.cumsum([0] + [p.n for p in parts])
        self.n, self.d = int(self.starts[-1]), parts[0].d

    def _pieces(self, start: int, stop: int):
        for p, a in zip(self.parts, self.starts[:-1]):
            lo, hi = max(start, a), min(stop, a + p.n)
            if lo < hi:
                yield p, lo - a, hi - a

    def load(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [start, stop) across the parts (within one part: that part's rows, not a copy of them)."""
        pieces = [torch.as_tensor(p.load(a, b)) for p, a, b in self._pieces(start, stop)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (ascending) across the parts."""
        part = np.searchsorted(self.starts, rows, side="right") - 1
        return np.concatenate([self.parts[k].take(rows[part == k] - self.starts[k]) for k in range(len(self.parts))])

    def release(self, start: int, stop: int) -> None:
        """Release rows [start, stop) of the parts they fall in."""
        for p, a, b in self._pieces(start, stop):
            p.release(a, b)


class Reducer(Protocol):
    """What a sweep reduces each tile with: per-row state over the resident columns."""

    def init(self, n: int, r0: int):
        """The state of `n` rows starting at row r0."""

    def update(self, state, s: torch.Tensor, r0: int, c0: int):
        """The state after tile `s` (rows r0.., columns c0..) of the similarity matrix."""

    def finish(self, state) -> tuple[torch.Tensor, ...]:
        """The results, one array per quantity, from the final state."""


def out_rel(dtype: torch.dtype) -> float:
    """Relative error of rounding a float32 sum to `dtype`, relative to the rounded value: u / (1 - u)."""
    if dtype == torch.float32:
        return 0.0  # the float32 rounding of the sum is inside the γ_K term of the bound
    u = unit_roundoff(dtype)
    return u / (1 - u)


def chunk_bounds(start: int, stop: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """[a, b) bounds of consecutive chunks of `chunk_size` rows covering [start, stop)."""
    for a in range(start, stop, chunk_size):
        yield a, min(stop, a + chunk_size)


def own_columns(row_owner: torch.Tensor, col_owner: torch.Tensor, r0: int, c0: int, shape) -> torch.Tensor:
    """Bool tile: column c belongs to the same pair/image as row r (owner ids equal)."""
    n, m = shape
    return row_owner[r0:r0 + n, None] == col_owner[None, c0:c0 + m]


def sweep(rows: Rows, resident: torch.Tensor, reducer: Reducer, *, device: torch.device,
          bias: torch.Tensor | None = None, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
          start: int = 0, stop: int | None = None, chunk_size: int | None = None,
          progress: Callable[[int], None] | None = None, precision: torch.dtype | None = None,
          ) -> Iterator[tuple[int, int, tuple[np.ndarray, ...]]]:
    """Yield (r0, r1, results) for consecutive row ranges of `rows[start:stop]`.

    `resident` (M × D, float32, on `device`) and `bias` (M,) stay in place; `transform` (e.g. a
    retrieval head) maps each chunk on the device before the products; results are the reducer's
    per-row outputs as numpy arrays. `precision` below float32 takes the exact low-precision path
    (`init_low`, `update_low`) when the reducer has one.
    """
    stop = rows.n if stop is None else stop
    if transform is None and rows.d != resident.shape[1]:
        raise AlselError(f"dimension mismatch: rows have D = {rows.d}, resident side D = {resident.shape[1]}")
    kind = device.type
    chunk_size = chunk_size or auto_chunk_size(rows.d, device)
    if chunk_size < 1:
        raise AlselError(f"--chunk-size must be at least 1, got {chunk_size}")
    tile_rows = tile_rows_for(device)
    low = None
    if precision is not None and precision != torch.float32 and hasattr(reducer, "update_low"):
        low = LowResident(resident, bias, precision)
    col_block = CUDA_COL_BLOCK if kind != "cpu" else CPU_COL_BLOCK if low is None else CPU_LOW_COL_BLOCK
    m = resident.shape[0]
    bounds = list(chunk_bounds(start, stop, chunk_size))
    if not bounds:
        return
    cuda = kind == "cuda"
    # overlap reading with compute on CUDA, where the CPU is idle meanwhile; on CPU a reader thread
    # competes with the matmul for the same cores (measured: -30% on 2 cores), so chunks are read in turn
    prefetch = cuda
    # with prefetch, two staging buffers: the reader fills one with the next chunk while this one is reduced
    # cpu: pinned host buffers, copied to the device per chunk
    staging = [torch.empty((min(chunk_size, stop - start), rows.d), dtype=torch.float32, pin_memory=cuda)
               for _ in range(2 if prefetch else 1)]
    copied = [torch.cuda.Event() if cuda else None for _ in range(2)]
    # CPU returns low-precision products in their own dtype; CUDA is asked for float32 (out_dtype)
    buf_dtype = precision if low is not None and not cuda else torch.float32
    tile_buf = torch.empty(min(tile_rows, chunk_size) * min(col_block, m), device=device, dtype=buf_dtype)
    plan = (resident, reducer, bias, transform, tile_rows, col_block, tile_buf, low, progress)
    if not prefetch:
        for a, b in bounds:
            yield from _reduce_chunk(rows.load(a, b, staging[0]).to(device), a, b, rows, *plan)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alsel-read") as reader:
        pending = reader.submit(rows.load, *bounds[0], staging[0])
        for k, (a, b) in enumerate(bounds):
            host = pending.result()  # a bad row raises here, in chunk order
            x = host.to(device, non_blocking=True)
            copied[k % 2].record()
            if k + 1 < len(bounds):
                nxt = (k + 1) % 2
                copied[nxt].synchronize()  # its previous copy to the device is done before reuse
                pending = reader.submit(rows.load, *bounds[k + 1], staging[nxt])
            yield from _reduce_chunk(x, a, b, rows, *plan)


def _reduce_chunk(x, a, b, rows, resident, reducer, bias, transform, tile_rows, col_block, tile_buf, low, progress):
    """The compute tiles of one chunk against the resident column blocks; yields (a, b, results)."""
    if transform is not None:
        x = transform(x)
    m = resident.shape[0]
    if low is not None:
        x_low, err = low.rows(x)
    outs: list[tuple[torch.Tensor, ...]] = []
    for t0 in range(0, b - a, tile_rows):
        xt = x[t0:t0 + tile_rows]
        r0 = a + t0
        n = xt.shape[0]
        state = reducer.init_low(n, r0) if low is not None else reducer.init(n, r0)
        if low is not None and low.bias is not None:  # sign form: one shifted bias per row tile
            shifted = low.shifted_bias(float(err[t0:t0 + tile_rows].max()), tile_buf.dtype)
        for c0 in range(0, m, col_block):
            block = resident[c0:c0 + col_block]
            s = tile_buf[:n * block.shape[0]].view(n, block.shape[0])
            if low is not None:
                lhs, rhs = x_low[t0:t0 + tile_rows], low.matrix[c0:c0 + col_block].T
                if s.dtype == lhs.dtype:  # CPU: float32 accumulation (and bias), rounded once to the output
                    if low.bias is None:
                        torch.mm(lhs, rhs, out=s)
                    else:
                        torch.addmm(shifted[c0:c0 + col_block], lhs, rhs, out=s)
                else:  # CUDA: float32 accumulation and output
                    s = torch.mm(lhs, rhs, out_dtype=torch.float32)
                    if low.bias is not None:
                        s += shifted[c0:c0 + col_block]
                tile = LowTile(s, xt, block, None if bias is None else bias[c0:c0 + col_block],
                               err[t0:t0 + tile_rows], out_rel(s.dtype),
                               None if low.bias is None else
                               shifted[c0:c0 + col_block].float() - low.bias[c0:c0 + col_block])
                state = reducer.update_low(state, tile, r0, c0)
                continue
            if bias is None:
                torch.mm(xt, block.T, out=s)
            else:
                torch.addmm(bias[c0:c0 + col_block], xt, block.T, out=s)
            state = reducer.update(state, s, r0, c0)
        outs.append(reducer.finish(state))
    rows.release(a, b)
    results = tuple(torch.cat(parts).cpu().numpy() for parts in zip(*outs))
    if progress is not None:
        progress(b - a)
    yield a, b, results


def collect(chunks: Iterator[tuple[int, int, tuple[np.ndarray, ...]]]) -> tuple[np.ndarray, ...]:
    """Concatenate a sweep's per-chunk results."""
    parts = [res for _, _, res in chunks]
    if not parts:
        return ()
    return tuple(np.concatenate(p) for p in zip(*parts))


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 contiguous tensor of `a` on `device`."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)


class MaxSim:
    """Reducer: the largest similarity per row; exact on the low-precision path (value form: the entries
    whose upper bound reaches the row's certain lower bound are recomputed in float32)."""

    def init(self, n, r0):
        return None

    def update(self, state, s, r0, c0):
        m = s.amax(dim=1)
        return m if state is None else torch.maximum(state, m)

    def init_low(self, n, r0):
        return None

    def update_low(self, state, tile, r0, c0):
        """The row's largest value is at least F = max(best, least_value(largest approx)); only entries whose
        approx reaches value_floor(F) can be larger, and those are recomputed in float32."""
        top = tile.approx.amax(dim=1).float()
        floor = tile.least_value(top)
        if state is not None:
            floor = torch.maximum(floor, state)
        lo = tile.value_floor(floor)
        if tile.approx.dtype != torch.float32:  # rounded down to the tile's dtype: no candidate is lost
            low = lo.to(tile.approx.dtype)
            lo = torch.where(low.float() > lo, torch.nextafter(low, torch.full_like(low, -torch.inf)), low)
        cand = tile.approx >= lo[:, None]
        rows = cand.any(dim=1).nonzero().squeeze(1)
        best = torch.full_like(top, -torch.inf) if state is None else state.clone()
        if len(rows):
            best[rows] = torch.maximum(best[rows], tile.exact(rows, cand[rows]).amax(dim=1))
        return best

    def finish(self, state):
        return (state,)


class RangeRows:
    """Rows [start, stop) of another Rows source, as rows 0..stop-start (a shard of a pool)."""

    def __init__(self, rows, start: int, stop: int):
        self.rows, self.start = rows, start
        self.n, self.d = stop - start, rows.d

    def load(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [start, stop) of the range."""
        return self.rows.load(self.start + start, self.start + stop, out)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (ascending) of the range."""
        return self.rows.take(np.asarray(rows, dtype=np.int64) + self.start)

    def release(self, start: int, stop: int) -> None:
        """Release rows [start, stop) of the range."""
        self.rows.release(self.start + start, self.start + stop)
