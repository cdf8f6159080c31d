"""Exact answers from low-precision products: a rounding-error bound per similarity.

The float32 rows x (pool tile) and a (resident) are rounded to x_b, a_b in bfloat16 (CPU) or float16
(CUDA) and multiplied with float32 accumulation. Writing r_x = x - x_b, r_a = a - a_b (exact in
float32), for every entry

    |x·a - acc(x_b·a_b)| <= ||x_b|| ||r_a|| + ||r_x|| ||a|| + γ_K Σ|x_b,k a_b,k|,     γ_K = K u₃₂ / (1 - K u₃₂)

(the products of two bfloat16/float16 numbers are exact in float32; the sum of K terms in any order
loses at most γ_K of their absolute sum). Measured residual norms, not the worst case u·||x||, make
the bound about half as wide. Reducers use it to decide most entries from the cheap product and to
recompute in float32 only the few that fall within the bound of what they compare against.

Two forms of tile (`LowTile`):
- *sign* (a bias b is given, e.g. b = -ξ for scoring): approx = acc(x_b·a_b) + (b + E) with E at least
  the bound of every row of the chunk, b + E rounded up, the addition in float32 inside the matmul
  (CPU addmm) or after it (CUDA, float32 output). Then x·a + b > 0  ⇒  approx >= 0, whatever the
  rounding of the output (rounding keeps the sign), so `approx < 0` certifies "not positive".
- *value* (no bias, e.g. thresholds' running top-k): |approx - x·a| <= err_i + out_rel·|approx|, where
  out_rel is the unit roundoff of approx's dtype when the product is returned rounded to it (CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ._lazy import torch  # imported on first use (fast start)

from .errors import AlselError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
UNIT_ROUNDOFF_BITS = {"bfloat16": 8, "float16": 11, "float32": 24}  # u = 2^-bits, by dtype name


def unit_roundoff(dtype) -> float:
    """u of a torch dtype: 2^-8 (bfloat16), 2^-11 (float16), 2^-24 (float32)."""
    return 2.0 ** -UNIT_ROUNDOFF_BITS[str(dtype).removeprefix("torch.")]


def low_dtype(name: str):
    """The torch dtype of --precision bf16 / fp16 (float32 for anything else)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
SLACK = 2.0 ** -20  # covers the float32 arithmetic of the bound itself (|values| <= ~2)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bfloat16 matmuls (then --precision auto picks bf16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """auto: float16 on CUDA (tensor cores), bfloat16 on CPUs with native bfloat16 dot products
    (AVX512-BF16/AMX), float32 elsewhere. The result does not depend on it (within SPEC §3)."""
    if name not in PRECISIONS:
        raise AlselError(f"--precision {name!r}: expected auto, fp32, bf16 or fp16")
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return low_dtype(name)


def precision_name(dtype: torch.dtype) -> str:
    """bf16, fp16 or fp32 for a torch dtype."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def gamma(k: int) -> float:
    """γ_k = k u / (1 - k u) for float32: the relative error bound of a k-term float32 dot product."""
    u = unit_roundoff(torch.float32)
    return k * u / (1 - k * u)


def round_up(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The low-precision numbers >= v (float32) nearest to v."""
    low = v.to(dtype)
    return torch.where(low.float() < v, torch.nextafter(low, torch.full_like(low, torch.inf)), low)


class LowResident:
    """The resident side in low precision and what the rounding bound needs of it."""

    def __init__(self, resident: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        self.dtype = dtype
        self.resident = resident
        low = resident.to(dtype)
        self.norm_max = self.low_norm_max = self.residual_max = 0.0
        for a in range(0, len(resident), 65536):  # in row blocks: no float32 copies of the whole side
            r, r_low = resident[a:a + 65536], low[a:a + 65536].float()
            self.norm_max = max(self.norm_max, float(r.norm(dim=1).max()))
            self.low_norm_max = max(self.low_norm_max, float(r_low.norm(dim=1).max()))
            self.residual_max = max(self.residual_max, float((r - r_low).norm(dim=1).max()))
        self.k = resident.shape[1]
        self.matrix = low.contiguous()
        self.bias = None
        self.bias_term = 0.0
        if bias is not None:
            # an infinite bias (ξ = -inf under --form rank with fewer than k negatives) stands as ±4, beyond
            # any |x·a| <= 1.01, so its entries keep their sign; their exact values are recomputed as ±inf
            self.bias = torch.where(torch.isfinite(bias), bias, torch.sign(bias) * 4)
            self.bias_term = float(self.bias.abs().max()) + 1 if len(bias) else 1.0  # >= |b + E| in the sum

    def rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_b, err): the rows in low precision and the bound of each: for every resident a,
        |x·a - acc(x_b·a_b)| <= err_i."""
        low = x.to(self.dtype)
        low32 = low.float()
        low_norm = low32.norm(dim=1)
        residual = (x - low32).norm(dim=1)
        err = low_norm * self.residual_max + residual * self.norm_max
        return low, err + gamma(self.k + 1) * (low_norm * self.low_norm_max + self.bias_term) + SLACK

    def shifted_bias(self, err_max: float, dtype: torch.dtype) -> torch.Tensor:
        """Sign form: b + E in `dtype`, rounded up, E >= err_i of every row of the chunk. Then
        x·a + b > 0  ⇒  acc(x_b·a_b) + (b + E) > 0, and rounding the sum keeps its sign."""
        shifted = self.bias + err_max
        return shifted if dtype == torch.float32 else round_up(shifted, dtype)


@dataclass
class LowTile:
    """One compute tile of a low-precision sweep, and the float32 data to recompute any entry exactly.

    approx: (n, m) low-precision (or float32) products, sign or value form (module docstring);
    x: (n, D) float32 rows; cols: (m, D) float32 resident block; bias: (m,) or None;
    err: (n,) bound of each row (value form); out_rel: unit roundoff of approx's dtype (value form).
    """

    approx: torch.Tensor
    x: torch.Tensor
    cols: torch.Tensor
    bias: torch.Tensor | None
    err: torch.Tensor
    out_rel: float
    shift: torch.Tensor | None = None  # sign form: (m,) the shifted bias as used minus the bias, each >= err

    GATHER_MAX = 4096  # more candidate entries than this: recompute their whole rows with one matmul

    def values(self, rows: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Float32 values x·a + b of the entries (rows[r], c): candidate rows `rows` (tile-local)
        and, per entry, its index r into them and its column c."""
        if len(r) > self.GATHER_MAX:  # dense: one matmul over the candidate rows
            x = self.x[rows]
            dense = x @ self.cols.T if self.bias is None else torch.addmm(self.bias, x, self.cols.T)
            return dense[r, c]
        return self.gathered(rows, r, c)

    def gathered(self, rows: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """values() by gathered dot products (in blocks of GATHER_MAX entries), however many: for
        candidates spread thinly over many rows, where a dense recompute would redo the whole tile."""
        out = []
        for a in range(0, len(r), self.GATHER_MAX):
            rr, cc = r[a:a + self.GATHER_MAX], c[a:a + self.GATHER_MAX]
            v = torch.linalg.vecdot(self.x[rows[rr]], self.cols[cc])
            out.append(v if self.bias is None else v + self.bias[cc])
        return torch.cat(out) if out else torch.zeros(0, device=self.x.device)

    def _key_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """CPU low precision: per row the smallest and largest int16 key of the tile (one pass, kept)."""
        if getattr(self, "_keys", None) is None:
            keys = self.approx.view(torch.int16)
            self._keys = (keys.amin(dim=1), keys.amax(dim=1))  # two passes: faster than aminmax here
        return self._keys

    def sign_candidates(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sign form: (rows, r, c) of the entries with approx >= 0 — the only ones that may be positive."""
        a = self.approx
        if a.device.type == "cpu" and a.dtype != torch.float32:
            # the sign bit decides: an int16 view is >= 0 exactly for +0 and positive numbers (and an
            # int16 row max and numpy's compare run several times faster than bfloat16 ones here)
            keys = a.view(torch.int16)
            rows = torch.from_numpy(np.flatnonzero(self._key_range()[1].numpy() >= 0))
            flat = np.flatnonzero(keys.numpy()[rows.numpy()] >= 0)
            m = a.shape[1]
            return rows, torch.from_numpy(flat // m), torch.from_numpy(flat % m)
        rows = (a.amax(dim=1) >= 0).nonzero().squeeze(1)
        r, c = (a[rows] >= 0).nonzero(as_tuple=True)
        return rows, r, c

    def row_max_(self, best: torch.Tensor) -> torch.Tensor:
        """Sign form: best[i] = max(best[i], max_j (x_i·a_j + b_j)) in float32, in place (band_candidates,
        recomputed in float32)."""
        rows, r, c = self.band_candidates(best)
        if not len(rows):
            return best
        vals = self.gathered(rows, r, c)
        row_best = torch.full((len(rows),), -torch.inf, device=best.device).scatter_reduce_(
            0, r.to(best.device), vals.to(best.device), reduce="amax")
        best[rows] = torch.maximum(best[rows], row_best)
        return best

    def band_candidates(self, best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sign form: (rows, r, c) of the entries that may hold a row's largest value x_i·a_j + b_j beyond
        `best` (rows whose best is still <= 0; the others' larger entries are sign candidates).

        With δ_j = shift_j in [δmin, δmax], every entry satisfies
            approx - u|approx| - δ_j - err_i  <=  x·a + b  <=  approx + u|approx| - δ_j + err_i,
        so the row's largest value is at least F_i = max(best_i, lower bound of the row's largest approx),
        and only entries whose upper bound reaches F_i can be larger: those are recomputed in float32.
        A row whose largest approx cannot reach F_i is skipped without a look at its entries, and so is
        a row whose best is already positive: an entry above it is positive, so its approx is >= 0 and
        the caller recomputed it with the sign candidates (and put it into `best` first)."""
        a, u, err = self.approx, self.out_rel, self.err
        dmin, dmax = float(self.shift.min()), float(self.shift.max())
        low_cpu = a.device.type == "cpu" and a.dtype != torch.float32
        if low_cpu:
            # sign-magnitude bits: the largest value is the largest key when some entry is >= 0, else the
            # smallest key (the negative number of least magnitude); int16 reductions, no conversion
            keys = a.view(torch.int16)
            kmin, kmax = self._key_range()
            top = torch.where(kmax >= 0, kmax, kmin).view(a.dtype).float()
        else:
            top = a.amax(dim=1).float()
        certain = top - u * top.abs() - dmax - err - SLACK * (1 + top.abs())
        floor = torch.maximum(certain, best)
        t = floor + dmin - err
        reach = torch.where(t >= 0, t / (1 + u), t / (1 - u)) - SLACK * (1 + t.abs())  # least approx that may
        rows = ((top >= reach) & (best <= 0)).nonzero().squeeze(1)
        if not len(rows):
            return rows, rows, rows
        if low_cpu:
            # approx >= reach, in key space: reach rounded down to the tile's dtype, then compared as bits
            lo = reach[rows].to(a.dtype)
            lo = torch.where(lo.float() > reach[rows], torch.nextafter(lo, torch.full_like(lo, -torch.inf)), lo)
            k_lo = lo.view(torch.int16).numpy()[:, None]
            rn = rows.numpy()
            k = keys.numpy()[rn]
            # rows whose entries are all negative (then lo < 0 too): approx >= lo <=> magnitude <= lo's <=>
            # key <= lo's key; rows with an entry >= 0 (few) compare both signs, on their own
            cand = k <= k_lo
            mixed = np.flatnonzero(kmax.numpy()[rn] >= 0)
            if len(mixed):
                km, kl = k[mixed], k_lo[mixed]
                cand[mixed] = np.where(kl >= 0, km >= kl, (km >= 0) | (km <= kl))
            flat = np.flatnonzero(cand)
            r, c = torch.from_numpy(flat // a.shape[1]), torch.from_numpy(flat % a.shape[1])
        else:
            r, c = (a[rows].float() >= reach[rows, None]).nonzero(as_tuple=True)
        return rows, r, c

    def exact(self, rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Float32 values (x·a + b) of the tile's rows `rows`, where `cand` (len(rows) × m bool) is
        true; -inf elsewhere: a len(rows) × m float32 tile."""
        r, c = cand.nonzero(as_tuple=True)
        out = torch.full(cand.shape, -torch.inf, device=cand.device)
        out[r, c] = self.values(rows, r, c)
        return out

    def value_floor(self, threshold: torch.Tensor) -> torch.Tensor:
        """Value form: per row, the least approx that may belong to an entry whose value is at least
        `threshold` (n,) — i.e. approx + err + out_rel·|approx| >= threshold, solved for approx."""
        u = self.out_rel
        t = threshold - self.err
        return torch.where(t >= 0, t / (1 + u), t / (1 - u)) - SLACK * (1 + t.abs())

    def least_value(self, approx_value: torch.Tensor) -> torch.Tensor:
        """Value form: per row, a value that an entry whose approx is `approx_value` (n,) certainly
        reaches: approx - err - out_rel·|approx|."""
        return approx_value - self.err - self.out_rel * approx_value.abs() - SLACK * (1 + approx_value.abs())
