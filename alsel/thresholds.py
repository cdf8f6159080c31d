"""Per-pair thresholds ξ_j of SPEC §3 (Jo et al., arXiv 2405.16301).

h_j = k-th largest negative value of pair j (-inf when fewer than k negatives), p_j = s(x_i(j), t_j):
    loss:   ξ_j = max(h_j, p_j - α)      (a new item beyond ξ_j raises the VSE++ max-of-hinges loss)
    rank:   ξ_j = h_j
    margin: ξ_j = p_j - α
Negatives: `images` — distinct paired images x ≠ i(j), value s(x, t_j);
           `texts`  — paired texts l with i(l) ≠ i(j), value s(x_i(j), t_l);
from the whole paired set (`full`) or from j's block of perm = default_rng(seed).permutation(N_t)
(`mini`, blocks of `batch_size`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from ._lazy import torch  # imported on first use (fast start)

from .errors import AlselError
from .store import Paired
from .stream import ArrayRows, collect, own_columns, sweep, to_device

SELECT = ("images", "texts")
BATCH = ("full", "mini")
FORMS = ("loss", "rank", "margin")
MINI_BLOCKS_PER_STEP = 256  # blocks of one batched matmul in the mini-batch path


@dataclass(frozen=True)
class ThresholdParams:
    select: str = "images"
    top_k: int = 1
    batch: str = "full"
    batch_size: int = 128
    margin: float = 0.2
    form: str = "loss"
    seed: int = 0

    def __post_init__(self):
        if self.select not in SELECT:
            raise AlselError(f"--select {self.select!r}: expected images or texts")
        if self.batch not in BATCH:
            raise AlselError(f"--batch {self.batch!r}: expected full or mini")
        if self.form not in FORMS:
            raise AlselError(f"--form {self.form!r}: expected loss, rank or margin")
        if int(self.top_k) < 1:
            raise AlselError(f"--top-k must be at least 1, got {self.top_k}")
        if int(self.batch_size) < 1:
            raise AlselError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not np.isfinite(self.margin):
            raise AlselError(f"--margin must be a finite number, got {self.margin}")

    def as_attrs(self) -> dict:
        """The parameters as file attributes."""
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict, path: str) -> "ThresholdParams":
        try:
            return cls(select=str(attrs["select"]), top_k=int(attrs["top_k"]), batch=str(attrs["batch"]),
                       batch_size=int(attrs["batch_size"]), margin=float(attrs["margin"]),
                       form=str(attrs["form"]), seed=int(attrs["seed"]))
        except KeyError as e:
            raise AlselError(f"{path}: attribute {e.args[0]!r} is missing") from None
        except (TypeError, ValueError) as e:
            raise AlselError(f"{path}: malformed threshold attributes ({e})") from None
        except AlselError as e:
            raise AlselError(f"{path}: {e}") from None


class RunningTopK:
    """Reducer: the k largest values per row, skipping columns owned by the row's own pair; the k-th
    (or, with `all_k`, all k, largest first)."""

    def __init__(self, k: int, row_owner: torch.Tensor, col_owner: torch.Tensor, all_k: bool = False):
        self.k, self.row_owner, self.col_owner, self.all_k = k, row_owner, col_owner, all_k

    def init(self, n, r0):
        return torch.full((n, self.k), -torch.inf, device=self.row_owner.device)

    def update(self, state, s, r0, c0):
        s.masked_fill_(own_columns(self.row_owner, self.col_owner, r0, c0, s.shape), -torch.inf)
        if self.k == 1:
            return torch.maximum(state, s.amax(dim=1, keepdim=True))
        both = torch.cat([state, s], dim=1)
        return both.topk(self.k, dim=1).values

    def init_low(self, n, r0=0):
        inf = torch.full((n, self.k), -torch.inf, device=self.row_owner.device)
        return inf, inf.clone()

    def update_low(self, state, tile, r0, c0):
        """Value-form tile. theta: running top-k of the approximations; the true k-th largest value h
        is at least least_value(theta_k) (one of the k entries behind theta_k has exact value <= h),
        so an entry can be in the top k only if its approx reaches value_floor of that: those few are
        recomputed in float32 and kept in a running top-k of exact values, the answer."""
        theta, exact = state
        v = tile.approx
        v.masked_fill_(own_columns(self.row_owner, self.col_owner, r0, c0, v.shape), -torch.inf)
        k = min(self.k, v.shape[1])
        top = v.topk(k, dim=1).values.float() if k > 1 else v.amax(dim=1, keepdim=True).float()
        theta = torch.cat([theta, top], dim=1).topk(self.k, dim=1).values if self.k > 1 else torch.maximum(theta, top)
        floor = tile.value_floor(tile.least_value(theta[:, -1]))
        rowmax = top[:, 0]
        rows = ((rowmax >= floor) & (rowmax > -torch.inf)).nonzero().squeeze(1)
        if len(rows):
            vr = v[rows].float()
            vals = tile.exact(rows, (vr >= floor[rows, None]) & (vr > -torch.inf))
            merged = torch.cat([exact[rows], vals], dim=1)
            exact[rows] = merged.topk(self.k, dim=1).values if self.k > 1 else merged.amax(dim=1, keepdim=True)
        return theta, exact

    def finish(self, state):
        if isinstance(state, tuple):  # low-precision state: (theta, exact)
            state = state[1]
        return (state,) if self.all_k else (state[:, -1],)


POSITIVE_ROWS = 65536


def positives(paired: Paired, device: torch.device) -> np.ndarray:
    """p_j = s(x_i(j), t_j) in float32, in row chunks (no N_t x D temporaries)."""
    out = np.empty(len(paired.texts), dtype=np.float32)
    for s in range(0, len(out), POSITIVE_ROWS):
        x = to_device(paired.images[paired.text_image[s:s + POSITIVE_ROWS]], device)
        t = to_device(paired.texts[s:s + POSITIVE_ROWS], device)
        out[s:s + len(x)] = (x * t).sum(dim=1).cpu().numpy()
    return out


def hardest_full(paired: Paired, params: ThresholdParams, device, chunk_size=None, progress=None,
                 precision: torch.dtype | None = None) -> np.ndarray:
    """h_j over the whole paired set, tiled over both sides with a running top-k (exact at any precision)."""
    ti = torch.from_numpy(paired.text_image).to(device)
    if params.select == "images":
        # queries: texts t_j; columns: images x; own column: x == i(j)
        rows = ArrayRows(paired.texts)
        reducer = RunningTopK(params.top_k, ti, torch.arange(len(paired.images), device=device))
        (h,) = collect(sweep(rows, to_device(paired.images, device), reducer, device=device,
                             chunk_size=chunk_size, progress=progress, precision=precision))
        return h
    # texts: the value depends on j only through its image, so compute per image x:
    # queries: images x; columns: texts l; own column: i(l) == x
    rows = ArrayRows(paired.images)
    reducer = RunningTopK(params.top_k, torch.arange(len(paired.images), device=device), ti)
    (h_image,) = collect(sweep(rows, to_device(paired.texts, device), reducer, device=device,
                               chunk_size=chunk_size, progress=progress, precision=precision))
    return h_image[paired.text_image]


def mini_blocks(n_texts: int, batch_size: int, seed: int) -> np.ndarray:
    """(n_blocks, batch_size) pair indices, -1 padding the last block (SPEC §3 mini-batches)."""
    perm = np.random.default_rng(seed).permutation(n_texts)
    n_blocks = -(-n_texts // batch_size)
    out = np.full(n_blocks * batch_size, -1, dtype=np.int64)
    out[:n_texts] = perm
    return out.reshape(n_blocks, batch_size)


def hardest_mini(paired: Paired, params: ThresholdParams, device, progress=None) -> np.ndarray:
    """h_j with negatives from j's mini-batch only, as batched B × B matmuls."""
    blocks = mini_blocks(len(paired.texts), params.batch_size, params.seed)
    texts = to_device(paired.texts, device)
    images = to_device(paired.images, device)
    ti = torch.from_numpy(paired.text_image).to(device)
    h = torch.empty(len(paired.texts), device=device)
    B = params.batch_size
    below = torch.tril(torch.ones(B, B, dtype=torch.bool, device=device), diagonal=-1)  # [l, l'] l' < l
    for s in range(0, len(blocks), MINI_BLOCKS_PER_STEP):
        blk = torch.from_numpy(blocks[s:s + MINI_BLOCKS_PER_STEP]).to(device)
        pad = blk < 0
        idx = blk.clamp(min=0)
        owner = torch.where(pad, torch.full_like(blk, -2), ti[idx])  # image of each pair, -2 = padding
        same = owner[:, :, None] == owner[:, None, :]  # [b, j, l]: same image
        if params.select == "images":
            # row j: text t_j; column l: image i(l), counted once per distinct image (first occurrence)
            v = torch.bmm(texts[idx], images[owner.clamp(min=0)].transpose(1, 2))
            dup = (same & below[None]).any(dim=2)  # column l repeats an image of an earlier column
            drop = same | dup[:, None, :] | pad[:, None, :]
        else:
            # row j: image x_i(j); column l: text t_l
            v = torch.bmm(images[owner.clamp(min=0)], texts[idx].transpose(1, 2))
            drop = same | pad[:, None, :]
        v.masked_fill_(drop, -torch.inf)
        k = params.top_k
        if k <= B:
            hb = v.topk(k, dim=2).values[:, :, -1]
        else:
            hb = torch.full(v.shape[:2], -torch.inf, device=device)
        keep = ~pad
        h[blk[keep]] = hb[keep]
        if progress is not None:
            progress(int(keep.sum()))
    return h.cpu().numpy()


def compute_xi(paired: Paired, params: ThresholdParams, device: torch.device, chunk_size: int | None = None,
               progress: Callable[[int], None] | None = None, precision: torch.dtype | None = None) -> np.ndarray:
    """ξ (N_t,) float32 for the paired set."""
    p = positives(paired, device)
    if params.form == "margin":
        if progress is not None:
            progress(len(p))
        return (p - np.float32(params.margin)).astype(np.float32)
    if params.batch == "full":
        h = hardest_full(paired, params, device, chunk_size, progress, precision)
    else:
        h = hardest_mini(paired, params, device, progress)
    if params.form == "rank":
        return h.astype(np.float32)
    return np.maximum(h, p - np.float32(params.margin)).astype(np.float32)


def progress_total(paired: Paired, params: ThresholdParams) -> int:
    """Units the progress callback of compute_xi reports in total."""
    if params.form != "margin" and params.batch == "full" and params.select == "texts":
        return len(paired.images)
    return len(paired.texts)


# --------------------------------------------------------------------------- thresholds file


def xi_fingerprint(xi: np.ndarray, params: ThresholdParams, paired_fp: str, head: str = "none") -> str:
    """A hash of ξ, its parameters, the paired store and the head: scores files record it."""
    import hashlib

    h = hashlib.sha256(paired_fp.encode())
    h.update(head.encode())
    h.update(repr(sorted(params.as_attrs().items())).encode())
    h.update(np.ascontiguousarray(xi, dtype="<f4").tobytes())
    return h.hexdigest()[:32]


@dataclass
class Thresholds:
    xi: np.ndarray
    params: ThresholdParams
    paired_fingerprint: str
    fingerprint: str
    head: str = "none"
    path: str | None = None


def make_thresholds(paired: Paired, params: ThresholdParams, device, chunk_size=None, progress=None,
                    precision: torch.dtype | None = None) -> Thresholds:
    """ξ of the paired set with its fingerprints (what threshold writes and score checks)."""
    xi = compute_xi(paired, params, device, chunk_size, progress, precision)
    fp = xi_fingerprint(xi, params, paired.fingerprint, paired.head)
    return Thresholds(xi, params, paired.fingerprint, fp, paired.head)


def save_thresholds(out, th: Thresholds, paired: Paired, created_by: str | None = None, inputs: tuple = ()) -> None:
    """Write the thresholds file atomically."""
    from .h5file import write_h5

    attrs = dict(th.params.as_attrs(), paired_fingerprint=th.paired_fingerprint, fingerprint=th.fingerprint,
                 paired_shape=f"{len(paired.images)}x{len(paired.texts)}x{paired.images.shape[1]}",
                 paired_path=paired.path, model=paired.model, head=th.head)
    write_h5(out, "thresholds", {"xi": th.xi.astype(np.float32)}, attrs, inputs=(paired.path, *inputs),
             created_by=created_by)


def load_thresholds(path: str, paired: Paired) -> Thresholds:
    """Read a thresholds file and check it was computed from `paired`."""
    from .h5file import attrs_dict, dataset, open_h5

    with open_h5(path, "thresholds") as f:
        attrs = attrs_dict(f)
        xi = np.asarray(dataset(f, "/xi", path, ndim=1, kind="f")[:], dtype=np.float32)
    params = ThresholdParams.from_attrs(attrs, path)
    fp = attrs.get("paired_fingerprint")
    if fp != paired.fingerprint:
        raise AlselError(f"{path}: thresholds were computed from another paired store "
                         f"(fingerprint {fp}, {paired.path} has {paired.fingerprint})")
    head = str(attrs.get("head", "none"))
    if head != paired.head:
        want = "no head" if paired.head == "none" else f"head {paired.head}"
        got = "no head" if head == "none" else f"head {head}"
        raise AlselError(f"{path}: thresholds were computed with {got}, this run uses {want} (--head)")
    if len(xi) != len(paired.texts):
        raise AlselError(f"{path}: /xi has {len(xi)} entries but {paired.path} has {len(paired.texts)} texts")
    if np.isnan(xi).any() or np.isposinf(xi).any():
        raise AlselError(f"{path}: /xi holds NaN or +inf values")
    return Thresholds(xi, params, fp, xi_fingerprint(xi, params, fp, head), head, path)
