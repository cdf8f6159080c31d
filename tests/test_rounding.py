"""The exact low-precision path: the rounding bound holds, and answers equal float32 on near-ties."""

import numpy as np
import pytest
import torch

from alsel import rounding
from alsel.rounding import LowResident, resolve_precision
from alsel.scoring import HingeSum
from alsel.stream import ArrayRows, collect, out_rel, sweep
from alsel.thresholds import RunningTopK
from conftest import unit
from reference import assert_scores_match

CPU = torch.device("cpu")
LOW = [torch.bfloat16, torch.float16]


def near_tie_world(rng, n_texts=60, n_pool=400, d=64, spread=1e-3):
    """Texts in 3 tight clusters with thresholds ξ_j, and pool rows u built so that s(u, t_j) = ξ_j + δ for
    one j with δ down to 1e-7 — and, the clusters being tight, within ~1e-3 of ξ_l for the other texts
    of that cluster: far inside the bfloat16 rounding band, where the cheap product cannot decide."""
    centers = unit(rng.standard_normal((3, d)))
    owner = rng.integers(0, 3, n_texts)
    texts = unit(centers[owner] + spread * rng.standard_normal((n_texts, d)))
    xi = rng.uniform(0.2, 0.4, 3)[owner] + rng.uniform(-1e-3, 1e-3, n_texts)
    j = rng.integers(0, n_texts, n_pool)
    delta = rng.choice([-1e-2, -3e-3, -1e-3, -1e-4, -1e-5, 0, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2], n_pool)
    delta = delta * rng.uniform(0.5, 1.0, n_pool)
    target = xi[j] + delta
    w = rng.standard_normal((n_pool, d))
    t = texts[j].astype(np.float64)
    w -= (w * t).sum(1, keepdims=True) * t  # w ⟂ t_j
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    pool = unit(target[:, None] * t + np.sqrt(1 - target[:, None] ** 2) * w)
    return texts, xi.astype(np.float32), pool


def c64(pool, anchors, xi):
    return pool.astype(np.float64) @ anchors.astype(np.float64).T - xi.astype(np.float64)[None, :]


def scores(pool, anchors, xi, precision, **kw):
    return collect(sweep(ArrayRows(pool), torch.from_numpy(anchors), HingeSum(), device=CPU,
                         bias=torch.from_numpy(-xi), precision=precision, **kw))


@pytest.mark.parametrize("dtype", LOW)
def test_value_bound_holds_on_every_entry(dtype):
    """|approx - x·a| <= err_i + out_rel |approx|, against float64, on rows with spread-out magnitudes."""
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((300, 128)) * rng.uniform(0.01, 3, 128))  # uneven coordinates
    a = unit(rng.standard_normal((500, 128)) * rng.uniform(0.01, 3, 128))
    low = LowResident(torch.from_numpy(a), None, dtype)
    xl, err = low.rows(torch.from_numpy(x))
    approx = (xl @ low.matrix.T).float().double().numpy()  # the product CPU returns, in its dtype
    exact = x.astype(np.float64) @ a.astype(np.float64).T
    u = out_rel(dtype)
    slack = err.double().numpy()[:, None] + u * np.abs(approx)
    assert np.all(np.abs(approx - exact) <= slack)
    # and the bound is not vacuous: about the measured error, well under the worst case 2u
    assert float(err.max()) < rounding.unit_roundoff(dtype) * 1.5


@pytest.mark.parametrize("dtype", LOW)
def test_sign_form_never_misses_a_positive(dtype):
    rng = np.random.default_rng(1)
    texts, xi, pool = near_tie_world(rng)
    low = LowResident(torch.from_numpy(texts), torch.from_numpy(-xi), dtype)
    xl, err = low.rows(torch.from_numpy(pool))
    approx = torch.addmm(low.shifted_bias(float(err.max()), dtype), xl, low.matrix.T).float().numpy()
    c = c64(pool, texts, xi)
    assert (c > 0).sum() > 1000 and (np.abs(c) < 3e-3).sum() > 1000  # many entries inside the band
    assert np.all(approx[c > 0] >= 0)
    assert (approx < 0).mean() > 0.3  # most negatives are certified by the cheap product alone


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("tiles", ["default", "small"])
def test_scores_equal_float32_on_near_ties(dtype, tiles, monkeypatch):
    if tiles == "small":
        monkeypatch.setattr("alsel.stream.CPU_TILE_ROWS", 7)
        monkeypatch.setattr("alsel.stream.CPU_COL_BLOCK", 11)
        monkeypatch.setattr("alsel.stream.CPU_LOW_COL_BLOCK", 11)
    rng = np.random.default_rng(2)
    texts, xi, pool = near_tie_world(rng)
    c = c64(pool, texts, xi)
    count32, surplus32, _ = scores(pool, texts, xi, torch.float32)
    count, surplus, _ = scores(pool, texts, xi, dtype, chunk_size=50)
    for weight, score in (("counting", count.astype(np.float32)), ("surplus", surplus.astype(np.float32))):
        assert_scores_match(count, score, c, weight)
    tie = (np.abs(c) < 1e-5).any(axis=1)
    assert np.array_equal(count[~tie], count32[~tie])
    assert np.allclose(surplus, surplus32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("tiles", ["default", "small"])
@pytest.mark.parametrize("shift", [0.0, 0.004, 0.02])
def test_closest_equals_float64_on_near_ties(dtype, tiles, shift, monkeypatch):
    """closest = max_j c_j within 1e-5 of float64, also for rows whose entries are all negative and crowd
    within the rounding band of their maximum (tight text clusters; ξ raised by `shift`)."""
    if tiles == "small":
        monkeypatch.setattr("alsel.stream.CPU_TILE_ROWS", 7)
        monkeypatch.setattr("alsel.stream.CPU_LOW_COL_BLOCK", 11)
    rng = np.random.default_rng(4)
    texts, xi, pool = near_tie_world(rng)
    xi = (xi + shift).astype(np.float32)
    c = c64(pool, texts, xi)
    _, _, closest = scores(pool, texts, xi, dtype, chunk_size=50)
    _, _, closest32 = scores(pool, texts, xi, torch.float32)
    assert np.abs(closest - c.max(axis=1)).max() < 1e-5
    assert np.abs(closest32 - c.max(axis=1)).max() < 1e-5
    if shift:
        assert (c.max(axis=1) < 0).mean() > 0.4
        near = np.sort(c, axis=1)[:, -2:]
        assert (near[:, 1] - near[:, 0] < 3e-3).mean() > 0.5  # the runner-up is inside the band


def test_closest_without_the_band_is_wrong(monkeypatch):
    """The near-tie data has teeth for closest too: taking the entry with the largest cheap product (no
    band of candidates around it) misses the true maximum."""
    from alsel.rounding import LowTile

    def naive(self, best):  # the one entry of the largest cheap product per row, no band around it
        top = self.approx.float().argmax(dim=1)
        rows = torch.arange(len(top))
        return rows, rows, top

    rng = np.random.default_rng(4)
    texts, xi, pool = near_tie_world(rng)
    xi = (xi + 0.004).astype(np.float32)
    c = c64(pool, texts, xi)
    monkeypatch.setattr(LowTile, "band_candidates", naive)
    _, _, closest = scores(pool, texts, xi, torch.bfloat16)
    assert np.abs(closest - c.max(axis=1)).max() > 1e-5


def test_infinite_thresholds_keep_their_sign():
    """ξ = -inf (--form rank, fewer than k negatives): every pool item counts, surplus +inf."""
    rng = np.random.default_rng(3)
    texts, xi, pool = near_tie_world(rng, n_texts=10, n_pool=30)
    xi[[2, 5]] = -np.inf
    count, surplus, closest = scores(pool, texts, xi, torch.bfloat16)
    count32, surplus32, closest32 = scores(pool, texts, xi, torch.float32)
    c = c64(pool, texts, xi)  # counts within the SPEC tolerance of float64 (entries |c| < 1e-5 may go either way)
    lo, hi = (c > 1e-5).sum(axis=1), (c > -1e-5).sum(axis=1)
    for n in (count, count32):
        assert np.all((n >= lo) & (n <= hi)), (n, lo, hi)
    assert np.all(np.isinf(surplus)) and np.all(count >= 2)
    assert np.all(np.isposinf(closest)) and np.all(np.isposinf(closest32))


def test_a_bound_too_narrow_is_caught(monkeypatch):
    """The near-tie data has teeth: dropping the rounding bound makes the low-precision path wrong."""
    rng = np.random.default_rng(2)
    texts, xi, pool = near_tie_world(rng)
    c = c64(pool, texts, xi)
    real_shift = LowResident.shifted_bias
    monkeypatch.setattr(LowResident, "shifted_bias", lambda self, err_max, dtype: real_shift(self, 0.0, dtype))
    count, surplus, _ = scores(pool, texts, xi, torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_scores_match(count, count.astype(np.float32), c, "counting")


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("spread", [0.5, 0.1])
def test_running_top_k_exact_on_near_ties(dtype, k, spread, monkeypatch):
    """k-th largest per row, own column excluded, when many values lie within the rounding band."""
    monkeypatch.setattr("alsel.stream.CPU_COL_BLOCK", 64)
    monkeypatch.setattr("alsel.stream.CPU_LOW_COL_BLOCK", 64)
    rng = np.random.default_rng(4)
    center = unit(rng.standard_normal((1, 64)))
    band = rounding.unit_roundoff(dtype)
    cols = unit(center + band * spread * rng.standard_normal((700, 64)))  # spread within the rounding band
    rows = unit(center + 0.3 * rng.standard_normal((90, 64)))
    own = torch.from_numpy(rng.integers(0, 700, 90))
    red = RunningTopK(k, own, torch.arange(700))
    (h,) = collect(sweep(ArrayRows(rows), torch.from_numpy(cols), red, device=CPU, precision=dtype, chunk_size=40))
    s = rows.astype(np.float64) @ cols.astype(np.float64).T
    s[np.arange(90), own.numpy()] = -np.inf
    ref = np.sort(s, axis=1)[:, -k]
    assert np.allclose(h, ref, atol=1e-6, rtol=0)
    assert np.median((s > ref[:, None] - band).sum(axis=1)) > 20 * spread  # many contenders inside the band


def test_resolve_precision():
    assert resolve_precision("fp32", CPU) == torch.float32
    assert resolve_precision("bf16", CPU) == torch.bfloat16
    assert resolve_precision("fp16", torch.device("cuda")) == torch.float16
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16
    assert resolve_precision("auto", CPU) in (torch.float32, torch.bfloat16)
    with pytest.raises(Exception, match="--precision"):
        resolve_precision("int8", CPU)


def test_top_k_data_has_teeth(monkeypatch):
    """Without the bound (err = 0, output rounding ignored) the near-tie top-k goes wrong."""
    real_rows = LowResident.rows
    monkeypatch.setattr(LowResident, "rows", lambda self, x: (real_rows(self, x)[0], torch.zeros(len(x))))
    monkeypatch.setattr("alsel.stream.out_rel", lambda dtype: 0.0)
    with pytest.raises(AssertionError):
        test_running_top_k_exact_on_near_ties(torch.bfloat16, 1, 0.1, monkeypatch)


@pytest.mark.parametrize("dtype", LOW)
def test_closest_on_float32_products_as_cuda_returns_them(dtype):
    """The CUDA path returns float32 products (float32 accumulation and output) with the shifted bias
    added after: row_max_'s float branch on such a tile equals float64 (run here on the CPU)."""
    from alsel.rounding import LowTile

    rng = np.random.default_rng(5)
    texts, xi, pool = near_tie_world(rng)
    xi = (xi + 0.004).astype(np.float32)
    low = LowResident(torch.from_numpy(texts), torch.from_numpy(-xi), dtype)
    x = torch.from_numpy(pool)
    xl, err = low.rows(x)
    shifted = low.shifted_bias(float(err.max()), torch.float32)
    approx = (xl.float() @ low.matrix.float().T) + shifted  # what torch.mm(..., out_dtype=float32) + bias gives
    tile = LowTile(approx, x, torch.from_numpy(texts), torch.from_numpy(-xi), err, out_rel(torch.float32),
                   shifted - low.bias)
    best = tile.row_max_(torch.full((len(pool),), -torch.inf))
    assert np.abs(best.numpy() - c64(pool, texts, xi).max(axis=1)).max() < 1e-5


@pytest.mark.parametrize("dtype", LOW)
def test_row_max_is_exact_at_low_precision(dtype, small_tiles):
    """MaxSim (k-center's distances, ProbCover's and schedule's coverage) on the near-tie data: every row's
    largest similarity as float32 gives it (within float32's own rounding of float64), at bf16 and fp16;
    the largest cheap product alone misses it."""
    from alsel.stream import MaxSim

    rng = np.random.default_rng(6)
    texts, _, pool = near_tie_world(rng)
    want = (pool.astype(np.float64) @ texts.astype(np.float64).T).max(axis=1)
    (got,) = collect(sweep(ArrayRows(pool), torch.from_numpy(texts), MaxSim(), device=CPU, precision=dtype))
    assert np.abs(got - want).max() < 1e-6
    (fp32,) = collect(sweep(ArrayRows(pool), torch.from_numpy(texts), MaxSim(), device=CPU))
    assert np.abs(fp32 - want).max() < 1e-6
    low = LowResident(torch.from_numpy(texts), None, dtype)
    xl, _ = low.rows(torch.from_numpy(pool))
    naive = (xl.float() @ low.matrix.float().T).double().numpy().argmax(axis=1)  # the largest cheap product
    assert np.abs((pool.astype(np.float64) * texts.astype(np.float64)[naive]).sum(1) - want).max() > 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_band_candidates_in_key_space_are_the_float_comparison(seed):
    """The CPU path finds a row's band (approx >= reach) by comparing int16 keys of the bfloat16 tile with
    reach rounded down (lo); on a tile with rows of mixed signs, all-negative rows, values at and around 0
    (both zeros) and rows whose best is already positive, it returns the entries the float comparison of
    the same tile returns, and besides them at most the entries equal to lo, below all of those."""
    from alsel.rounding import LowTile

    rng = np.random.default_rng(seed)
    n, m = 64, 96
    center = rng.choice([-0.3, -0.01, 0.0, 0.01], size=(n, 1))  # all-negative rows, and rows across 0
    approx = torch.from_numpy((center + 0.02 * rng.standard_normal((n, m))).astype(np.float32)).bfloat16()
    approx[rng.random((n, m)) < 0.03] = 0.0
    approx[rng.random((n, m)) < 0.03] = -0.0
    err = torch.from_numpy(rng.uniform(0, 0.01, n).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(0, 0.01, m).astype(np.float32))
    best = torch.from_numpy(rng.choice([-np.inf, -0.2, -0.005, 0.0, 0.02], n).astype(np.float32))
    u = out_rel(torch.bfloat16)
    x, cols = torch.zeros(n, 4), torch.zeros(m, 4)
    keyed = LowTile(approx, x, cols, None, err, u, shift).band_candidates(best.clone())
    floats = LowTile(approx.float(), x, cols, None, err, u, shift).band_candidates(best.clone())
    assert len(keyed[0]) > 10 and len(keyed[1]) > 50
    assert torch.equal(keyed[0], floats[0])
    as_set = lambda rows, r, c: set(zip(rows[r].tolist(), c.tolist()))  # noqa: E731
    keys, exact = as_set(*keyed), as_set(*floats)
    assert exact <= keys
    value = approx.float()
    for i in {i for i, _ in keys - exact}:
        extra = {float(value[i, j]) for k, j in keys - exact if k == i}
        assert len(extra) == 1  # one value: lo
        lo = extra.pop()
        assert all(float(value[i, j]) > lo for k, j in exact if k == i)
