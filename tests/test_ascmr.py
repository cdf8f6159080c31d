"""ASCMR building blocks against direct computations and brute force."""

import itertools

import numpy as np
import pytest

from alsel.ascmr import allocate, bald, fuse_gaussians, js_bernoulli, objective, target_shares
from alsel.errors import AlselError


def test_fused_gaussian_is_the_normalised_product():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.standard_normal((2, 5, 3))
    lv_a, lv_b = rng.standard_normal((2, 5, 3))
    mu, lv = fuse_gaussians(mu_a, lv_a, mu_b, lv_b)
    # the product density, evaluated on a grid, peaks at μ with curvature 1/σ² (per dimension)
    x = np.linspace(-6, 6, 200001)
    for r in range(5):
        for d in range(3):
            logp = -(x - mu_a[r, d]) ** 2 / (2 * np.exp(lv_a[r, d])) - (x - mu_b[r, d]) ** 2 / (2 * np.exp(lv_b[r, d]))
            assert x[np.argmax(logp)] == pytest.approx(mu[r, d], abs=1e-4)
            curv = -np.gradient(np.gradient(logp, x), x)[100000]
            assert curv == pytest.approx(np.exp(-lv[r, d]), rel=1e-4)


def test_bald_is_mutual_information():
    """Direct: I(y; w) = H(y) - E_w H(y | w) for each Bernoulli label, summed over labels."""
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.99, (6, 4, 3))  # J samples, N items, C labels
    got = bald(p)
    for n in range(4):
        mi = 0.0
        for c in range(3):
            ps = p[:, n, c]
            joint = np.array([[(1 - q) / len(ps), q / len(ps)] for q in ps])  # P(w_j, y)
            py = joint.sum(axis=0)
            mi += sum(joint[j, y] * np.log(joint[j, y] / (py[y] / len(ps)))
                      for j in range(len(ps)) for y in range(2))
        assert got[n] == pytest.approx(mi, rel=1e-9)
    assert np.allclose(bald(np.repeat(p[:1], 6, axis=0)), 0, atol=1e-9)  # no disagreement, no information


def test_js_is_symmetric_bounded_and_direct():
    rng = np.random.default_rng(2)
    p, q = rng.uniform(0.01, 0.99, (2, 7, 4))
    js = js_bernoulli(p, q)
    m = (p + q) / 2

    def kl(a, b):
        return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))

    assert np.allclose(js, (0.5 * kl(p, m) + 0.5 * kl(q, m)).sum(axis=1), rtol=1e-9)
    assert np.allclose(js, js_bernoulli(q, p)) and np.all(js <= 4 * np.log(2) + 1e-12)
    assert np.allclose(js_bernoulli(p, p), 0, atol=1e-12)


def brute_force(gains, shares, budget, lam):
    best, arg = -np.inf, None
    for counts in itertools.product(*(range(len(g) + 1) for g in gains)):
        if sum(counts) == budget:
            v = objective(gains, shares, counts, budget, lam)
            if v > best + 1e-12:
                best, arg = v, counts
    return best, arg


@pytest.mark.parametrize("seed", range(30))
def test_greedy_allocation_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 5)
    gains = [np.sort(rng.exponential(1.0, rng.integers(1, 6)))[::-1] for _ in range(k)]
    budget = int(rng.integers(1, sum(len(g) for g in gains) + 1))
    shares = target_shares([len(g) for g in gains], float(rng.uniform()))
    lam = float(rng.choice([0.0, 0.5, 5.0, 50.0]))
    counts = allocate(gains, shares, budget, lam)
    assert sum(counts) == budget and all(0 <= b <= len(g) for b, g in zip(counts, gains))
    best, _ = brute_force(gains, shares, budget, lam)
    assert objective(gains, shares, counts, budget, lam) == pytest.approx(best, abs=1e-9)


def test_density_term_spreads_the_budget():
    gains = [np.full(50, 1.0), np.full(50, 0.5), np.full(50, 0.4)]
    shares = target_shares([50, 50, 50], 1.0)
    assert allocate(gains, shares, 30, 0.0) == [30, 0, 0]  # informativeness only: one dense region
    spread = allocate(gains, shares, 30, 1000.0)
    assert spread == [10, 10, 10]
    with pytest.raises(AlselError):
        allocate(gains, shares, 151, 1.0)
    with pytest.raises(AlselError):
        target_shares([1, 2], 1.5)
